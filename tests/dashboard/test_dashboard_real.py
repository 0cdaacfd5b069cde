"""The dashboard on the real default model (SmolLM2-135M) and a real cache: the logit lens goes through the
model's RMSNorm weight and its tied unembedding, contexts are real text, values equal a re-encode."""

from __future__ import annotations

import json

import pytest
import torch

from saescale.activations.cache_read import CacheReader
from saescale.cliargs import parse_config
from saescale.commands.dashboard import DashboardCommand, run_dashboard
from saescale.sae.config import SAEConfig
from saescale.sae.io import load_sae, save_sae
from saescale.sae.registry import build_sae

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_dashboard_on_the_default_model(real_model, real_cache, tmp_path):
    manifest = json.loads((real_cache / "manifest.json").read_text())
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch="topk", n=256, k=8, d=manifest["d_model"], normalize="layernorm"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(256, manifest["d_model"]), dim=1))
        sae.W_enc.copy_(sae.W_dec)
    record = {k: v for k, v in manifest["config"].items()}
    record["hook"] = manifest["hook"]
    sae_dir = save_sae(sae, tmp_path / "run" / "sae", extra={"source": "cache", "activations": record, "cache": str(real_cache)})
    out = tmp_path / "dash"
    cfg = parse_config(DashboardCommand, [str(sae_dir), "--out", str(out), "--latents", "0-31", "--n2g-latents", "2",
                                          "--n2g-build", "4", "--n2g-test", "4", "--n2g-max-len", "6", "--no-progress"],
                       prog="saescale dashboard")
    summary = run_dashboard(cfg, lm=real_model)
    assert summary["latents"] == 32 and summary["explained"] == 2
    index = json.loads((out / "data" / "index.json").read_text())
    assert index["meta"]["final_norm"] == "LlamaRMSNorm weight" and index["meta"]["hook"] == "layers.20"
    model, tok = real_model
    doc = json.loads((out / "latents" / "7.json").read_text())
    W = sae.W_dec[7] * model.model.norm.weight
    eff = model.get_output_embeddings().weight @ W
    assert [t["token"] for t in doc["logits"]["promoted"]] == eff.topk(10).indices.tolist()
    top = doc["top"][0]
    text = tok.decode(top["tokens"])
    assert len(text) > 40 and sum(ch.isalpha() for ch in text) > 20  # real English text from the corpus
    rows = CacheReader(real_cache).read_all()
    sel = rows["ctx"] == top["ctx"]
    with torch.no_grad():
        code = load_sae(sae_dir).encode(rows["acts"][sel])
    z = (code.values * (code.indices == 7)).sum(-1).clamp_min(0)
    assert torch.allclose(torch.tensor(top["acts"])[rows["pos"][sel] - 1], z, rtol=1e-5, atol=1e-6)
    assert any(json.loads((out / "latents" / f"{i}.json").read_text())["explanation"] for i in range(32))
