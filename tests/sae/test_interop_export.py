"""Export to SAELens and sparsify, loaded by the real packages, against saescale on the same raw activations;
and the import back: identical tensors and config."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sae_lens import SAE
from sparsify import SparseCoder

from saescale.cli import main
from saescale.errors import SaescaleError
from saescale.sae.formats.export import export_sae
from saescale.sae.io import load_sae, read_cfg, save_sae
from tests.helpers import make_sae

N, K, D, B = 64, 4, 16, 96
EXTRA = {"source": "cache", "activations": {"model": "default", "hook": "layers.20", "corpus": "default", "context_len": 64,
                                            "prepend_bos": True, "keep_first": False, "val_fraction": 0.05},
         "train": {"lr": 4e-4}, "steps": 3}
ARCHS = ["topk", "relu", "gated", "jumprelu", "batchtopk", "matryoshka"]
NORMS = ["layernorm", "std", "mean_sq", "none"]


def synthetic(arch: str, normalize: str, seed: int = 0):
    """A random SAE with unit-norm decoder rows and non-trivial architecture tensors."""
    sae = make_sae(arch, N, K, D, normalize=normalize, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if normalize == "mean_sq":
            sae.cfg.norm_scale = 0.37
        sae.b_pre.copy_(0.2 * torch.randn(D, generator=g))
        sae.normalize_decoder()
        if arch == "gated":
            sae.r_mag.copy_(0.3 * torch.randn(N, generator=g))
            sae.b_mag.copy_(0.1 * torch.randn(N, generator=g))
        if arch == "jumprelu":
            sae.log_threshold.copy_(math.log(0.05) + 0.5 * torch.randn(N, generator=g))
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.04)
    return sae


def raw_acts(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return 3 * torch.randn(B, D, generator=g) + 0.5


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal within 1e-5 relative (to the largest entry of b)."""
    a, b = a.double(), b.double()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def ours(sae, x):
    x_n, stats = sae.normalize(x)
    code = sae.encode_normalized(x_n)
    return code.to_dense(N), sae.decode(code, stats)


def saved(tmp_path, sae):
    return save_sae(sae, tmp_path / "sae", extra=EXTRA)


def assert_same_sae(path, sae):
    back = load_sae(path)
    assert back.cfg == sae.cfg and type(back) is type(sae)
    for name in sae.stored_names():
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert read_cfg(path)[1] == EXTRA


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_export_computes_the_same(tmp_path, arch, norm):
    sae = synthetic(arch, norm)
    out = export_sae(saved(tmp_path, sae), "saelens", tmp_path / "sl")
    sl = SAE.load_from_disk(out)
    assert sl.W_enc.dtype == torch.float32 and tuple(sl.W_enc.shape) == (D, N) and tuple(sl.W_dec.shape) == (N, D)
    assert sl.cfg.metadata.model_name == "default" and sl.cfg.metadata.hook_name == "blocks.20.hook_resid_post"
    x = raw_acts()
    z, x_hat = ours(sae, x)
    with torch.no_grad():
        z_s = sl.encode(x)
        x_hat_s = sl.decode(z_s)
    assert int((z > 0).sum()) > B  # the comparison sees active latents
    close(z_s, z)
    close(x_hat_s, x_hat)
    assert_same_sae(out, sae)


@pytest.mark.parametrize("norm", ["mean_sq", "none"])
def test_sparsify_export_computes_the_same(tmp_path, norm):
    sae = synthetic("topk", norm)
    out = export_sae(saved(tmp_path, sae), "sparsify", tmp_path / "sp")
    sp = SparseCoder.load_from_disk(out)
    # sparsify keeps the file's dtype: float64 when a constant was folded, float32 otherwise
    assert sp.dtype == (torch.float64 if norm == "mean_sq" else torch.float32)
    x = raw_acts()
    z, x_hat = ours(sae, x)
    for model in (sp, sp.to(torch.float32)):
        with torch.no_grad():
            enc = model.encode(x)
            dense = torch.zeros(B, N, dtype=enc.top_acts.dtype).scatter(1, enc.top_indices, enc.top_acts)
            close(dense, z)
            close(model.decode(enc.top_acts, enc.top_indices), x_hat)
    assert_same_sae(out, sae)


def test_folded_saelens_weights_are_float64_on_disk_and_float32_loaded(tmp_path):
    from safetensors.torch import load_file

    sae = synthetic("topk", "layernorm")
    out = export_sae(saved(tmp_path, sae), "saelens", tmp_path / "sl")
    t = load_file(str(out / "sae_weights.safetensors"))
    assert t["W_enc"].dtype == t["W_dec"].dtype == t["b_dec"].dtype == torch.float64
    assert t["b_enc"].dtype == torch.float32  # untouched by the fold
    torch.testing.assert_close(t["W_enc"], sae.W_enc.double().T / math.sqrt(D - 1), rtol=1e-15, atol=0)
    assert all(p.dtype == torch.float32 for p in SAE.load_from_disk(out).parameters())
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "layer_norm" and cfg["architecture"] == "topk" and cfg["k"] == K
    assert cfg["metadata"]["saescale"]["sae"]["normalize"] == "layernorm"


def test_float32_rounded_fold_would_not_import_back_exactly(tmp_path):
    """Why folded tensors are float64: the same fold rounded to float32 does not come back bit for bit."""
    sae = synthetic("topk", "layernorm")
    c = math.sqrt(D - 1)
    w32 = (sae.W_enc.double() / c).float()
    assert not torch.equal((w32.double() * c).float(), sae.W_enc.detach())
    assert torch.equal(((sae.W_enc.double() / c) * c).float(), sae.W_enc.detach())


@pytest.mark.parametrize("arch,norm,fmt,needle", [
    ("prolu", "layernorm", "saelens", "--arch prolu cannot be exported to SAELens"),
    ("relu", "none", "sparsify", "--arch relu cannot be exported to sparsify"),
    ("topk", "layernorm", "sparsify", "--normalize layernorm cannot be exported to sparsify"),
    ("topk", "std", "sparsify", "--normalize std cannot be exported to sparsify"),
])
def test_refused_exports_write_nothing(tmp_path, arch, norm, fmt, needle):
    src = saved(tmp_path, synthetic(arch, norm))
    with pytest.raises(SaescaleError) as e:
        export_sae(src, fmt, tmp_path / "out")
    assert needle in str(e.value) and "\n" not in str(e.value)
    if fmt == "sparsify" and arch == "topk":
        assert "--normalize mean_sq or none" in str(e.value) and "--format saelens" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_failed_export_keeps_the_previous_folder(tmp_path, monkeypatch):
    src = saved(tmp_path, synthetic("topk", "none"))
    out = export_sae(src, "saelens", tmp_path / "sl")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import saescale.sae.formats.export as ex

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "atomic_write_json", broken)  # the disk fills after the weights are written
    with pytest.raises(OSError):
        export_sae(src, "saelens", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae", "sl"]  # no temporary folder left


def test_export_refuses_to_replace_its_source(tmp_path):
    src = saved(tmp_path, synthetic("topk", "none"))
    for out in (src, tmp_path):
        with pytest.raises(SaescaleError, match="would replace the SAE being exported"):
            export_sae(src, "saelens", out)
    assert load_sae(src).cfg.arch == "topk"


def test_export_command_line(tmp_path, capsys):
    src = saved(tmp_path, synthetic("gated", "std"))
    assert main(["export", str(src), "--format", "saelens", "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "sae_weights.safetensors").is_file()
    assert main(["export", str(src), "--format", "sparsify", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --arch gated cannot be exported to sparsify") and err.count("\n") == 1
    assert not (tmp_path / "y").exists()
