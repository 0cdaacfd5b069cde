"""Export/import on SAEs trained on the default model (SmolLM2-135M): the real sae_lens and sparsify loaders
compute saescale's codes and reconstructions on real activations, the import back is exact, and eval of the
exported-then-imported SAELens folder gives the original's metrics."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE
from sparsify import SparseCoder

from saescale.activations.cache import CacheReader
from saescale.activations.config import ActivationConfig
from saescale.cli import main
from saescale.configs import config_to_dict
from saescale.sae.config import SAEConfig
from saescale.sae.formats.export import export_sae
from saescale.sae.io import load_sae, read_cfg
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae
from tests.sae.test_interop_export import close

pytestmark = [pytest.mark.real, pytest.mark.slow]


def trained(real_cache, out, normalize):
    train = CacheReader(real_cache, "train")
    acts = ActivationConfig(n_tokens=8192, val_fraction=0.25, cache_dir=str(real_cache))
    extra = {"source": "cache", "cache": str(real_cache), "activations": config_to_dict(acts)}
    cfg = TrainConfig(tokens=2 * train.n_tokens, batch_size=512, lr=2e-3, progress=False)
    train_sae(SAEConfig(n=512, k=16, normalize=normalize), cfg, train, out, extra=extra)
    return out / "sae"


def check_exact_import(exported, original):
    back, sae = load_sae(exported), load_sae(original)
    assert back.cfg == sae.cfg
    assert all(torch.equal(getattr(back, n), getattr(sae, n)) for n in sae.stored_names())
    assert read_cfg(exported)[1] == read_cfg(original)[1]


def test_real_model_export_import_and_eval(real_cache, real_model, tmp_path):
    held = CacheReader(real_cache, "val").read_all()["acts"][:1024].float()
    ln = trained(real_cache, tmp_path / "ln", "layernorm")
    msq = trained(real_cache, tmp_path / "msq", "mean_sq")
    for src, fmt in ((ln, "saelens"), (msq, "saelens"), (msq, "sparsify")):
        out = export_sae(src, fmt, tmp_path / f"{src.parent.name}-{fmt}")
        sae = load_sae(src)
        with torch.no_grad():
            x_n, stats = sae.normalize(held)
            code = sae.encode_normalized(x_n)
            z, x_hat = code.to_dense(sae.cfg.n), sae.decode(code, stats)
            if fmt == "saelens":
                theirs = SAE.load_from_disk(out)
                z_t = theirs.encode(held)
                x_t = theirs.decode(z_t)
            else:
                theirs = SparseCoder.load_from_disk(out)
                enc = theirs.encode(held)
                z_t = torch.zeros_like(z, dtype=enc.top_acts.dtype).scatter(1, enc.top_indices, enc.top_acts)
                x_t = theirs.decode(enc.top_acts, enc.top_indices)
        close(z_t, z)
        close(x_t, x_hat)
        check_exact_import(out, src)
    # eval of the exported-then-imported SAELens folder: the original's numbers
    sl = tmp_path / "ln-saelens"
    for folder, where in ((ln, tmp_path / "eval-a"), (sl, tmp_path / "eval-b")):
        assert main(["eval", str(folder), "--metrics", "recon", "--eval-contexts", "8", "--out", str(where)]) == 0
    a, b = (json.loads((tmp_path / w / "metrics.json").read_text()) for w in ("eval-a", "eval-b"))
    assert a["metrics"]["recon"] == b["metrics"]["recon"] and 0 < a["metrics"]["recon"]["nmse"] < 1
    assert a["settings"]["hook"] == b["settings"]["hook"] and a["settings"]["model"] == b["settings"]["model"]
