"""Foreign SAEs made by their own libraries (SAELens, sparsify) or saved as OpenAI's release saves them,
read by load_sae, computing what their own code computes; and bad foreign input refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from sae_lens import GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, \
    TopKSAEConfig
from sparsify import SparseCoder, SparseCoderConfig

from saescale.cli import main
from saescale.errors import SaescaleError
from saescale.sae.io import load_sae, read_cfg
from tests.sae.test_interop_export import close

N, K, D, B = 64, 4, 16, 96


def acts(seed=0):
    return 3 * torch.randn(B, D, generator=torch.Generator().manual_seed(seed)) + 0.5


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def ours(sae, x):
    x_n, stats = sae.normalize(x)
    code = sae.encode_normalized(x_n)
    return code.to_dense(sae.cfg.n), sae.decode(code, stats)


SAELENS = {
    "topk": lambda **kw: TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=K, **kw)),
    "standard": lambda **kw: StandardSAE(StandardSAEConfig(d_in=D, d_sae=N, **kw)),
    "gated": lambda **kw: GatedSAE(GatedSAEConfig(d_in=D, d_sae=N, **kw)),
    "jumprelu": lambda **kw: JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=N, **kw)),
}
EXPECT = {"topk": "topk", "standard": "relu", "gated": "gated", "jumprelu": "jumprelu"}


@pytest.mark.parametrize("options", [{}, {"normalize_activations": "layer_norm"}, {"apply_b_dec_to_input": False}],
                         ids=["plain", "layer_norm", "no-b_dec-in"])
@pytest.mark.parametrize("arch", list(SAELENS))
def test_saelens_folders_read_exactly(tmp_path, arch, options):
    sl = SAELENS[arch](**options)
    randomize(sl)
    if arch == "jumprelu":
        with torch.no_grad():
            sl.threshold.copy_(0.05 + 0.1 * torch.rand(N, generator=torch.Generator().manual_seed(4)))
    sl.save_model(tmp_path / "sl")
    sae = load_sae(tmp_path / "sl")
    assert sae.cfg.arch == EXPECT[arch] and (sae.cfg.n, sae.cfg.d) == (N, D)
    assert sae.cfg.normalize == ("std" if options.get("normalize_activations") == "layer_norm" else "none")
    assert read_cfg(tmp_path / "sl")[1]["imported"]["format"] == "saelens"
    x = acts()
    z, x_hat = ours(sae, x)
    with torch.no_grad():
        z_s = sl.encode(x)
        x_hat_s = sl.decode(z_s)
    assert int((z_s > 0).sum()) > B
    close(z, z_s)
    close(x_hat, x_hat_s)


def test_saelens_topk_with_decoder_norm_rescaling(tmp_path):
    sl = TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=K, rescale_acts_by_decoder_norm=True))
    randomize(sl)
    with torch.no_grad():
        sl.W_dec.mul_(torch.linspace(0.5, 2.0, N)[:, None])  # rows not of unit norm: the rescaling matters
    sl.save_model(tmp_path / "sl")
    z, x_hat = ours(load_sae(tmp_path / "sl"), acts())
    with torch.no_grad():
        z_s = sl.encode(acts())
        close(z, z_s)
        close(x_hat, sl.decode(z_s))


def sparsify_coder(seed=0):
    torch.manual_seed(seed)
    sp = SparseCoder(D, SparseCoderConfig(num_latents=N, k=K))
    randomize(sp, seed)
    return sp


def test_sparsify_folder_and_run_folder(tmp_path):
    sp = sparsify_coder()
    sp.save_to_disk(tmp_path / "one")
    run = tmp_path / "run"
    for i, hook in enumerate(["layers.3", "layers.5"]):
        sparsify_coder(i).save_to_disk(run / hook)
    (run / "config.json").write_text("{}")  # the trainer's own config beside the hook points
    sae = load_sae(tmp_path / "one")
    assert (sae.cfg.arch, sae.cfg.n, sae.cfg.k, sae.cfg.normalize) == ("topk", N, K, "none")
    x = acts()
    z, x_hat = ours(sae, x)
    with torch.no_grad():
        enc = sp.encode(x)
        close(z, torch.zeros(B, N).scatter(1, enc.top_indices, enc.top_acts))
        close(x_hat, sp.decode(enc.top_acts, enc.top_indices))
    with pytest.raises(SaescaleError) as e:
        load_sae(run)
    assert str(e.value) == f"{run} holds 2 SAE folder(s), one per hook point (layers.3, layers.5): give one, e.g. {run / 'layers.3'}"
    picked = load_sae(run / "layers.5")
    assert torch.equal(picked.W_enc, sparsify_coder(1).encoder.weight.detach())
    assert read_cfg(run / "layers.5")[1] == {"imported": {"format": "sparsify", "hook": "layers.5"}}


def openai_state(activation="TopK", k=K, seed=0):
    """A state dict as OpenAI's Autoencoder.state_dict() writes it (tensors, the activation's name and state)."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(D, N, generator=g)
    sd = {"pre_bias": 0.1 * torch.randn(D, generator=g), "latent_bias": 0.1 * torch.randn(N, generator=g),
          "encoder.weight": dec.T + 0.2 * torch.randn(N, D, generator=g), "decoder.weight": dec / dec.norm(dim=0),
          "stats_last_nonzero": torch.zeros(N, dtype=torch.long), "latents_activation_frequency": torch.ones(N),
          "latents_mean_square": torch.zeros(N), "activation": activation}
    if activation == "TopK":
        sd["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"}
    return sd


def openai_forward(sd, x):
    """OpenAI's Autoencoder.encode / decode (sparse_autoencoder/model.py), written out."""
    normalize = sd["activation"] == "TopK"
    info = {}
    if normalize:
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + 1e-5)
        info = {"mu": mu, "std": std}
    pre = torch.nn.functional.linear(x - sd["pre_bias"], sd["encoder.weight"], sd["latent_bias"])
    if normalize:
        top = torch.topk(pre, k=sd["activation_state_dict"]["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        z = torch.relu(pre)
    out = torch.nn.functional.linear(z, sd["decoder.weight"]) + sd["pre_bias"]
    return z, (out * info["std"] + info["mu"]) if normalize else out


@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_openai_state_dict(tmp_path, activation):
    sd = openai_state(activation)
    torch.save(sd, tmp_path / "ae.pt")
    sae = load_sae(tmp_path / "ae.pt")
    assert sae.cfg.arch == ("topk" if activation == "TopK" else "relu")
    assert sae.cfg.normalize == ("std" if activation == "TopK" else "none")
    z, x_hat = ours(sae, acts())
    z_o, x_hat_o = openai_forward(sd, acts())
    close(z, z_o)
    close(x_hat, x_hat_o)


# ---- bad input: one line, nothing written ------------------------------------------------------

def saelens_folder(tmp_path):
    sl = SAELENS["topk"]()
    randomize(sl)
    sl.save_model(tmp_path / "sl")
    return tmp_path / "sl"


def edit_weights(folder, change):
    f = folder / "sae_weights.safetensors"
    t = load_file(str(f))
    change(t)
    save_file(t, str(f))
    return f


class Pickled:
    pass


def bad_cases():
    def missing(tmp):
        f = edit_weights(saelens_folder(tmp), lambda t: t.pop("b_enc"))
        return tmp / "sl", f"{f}: tensor b_enc is missing"

    def shape(tmp):
        f = edit_weights(saelens_folder(tmp), lambda t: t.update(W_enc=t["W_enc"].T.contiguous()))
        return tmp / "sl", f"{f}: tensor W_enc has shape (64, 16), expected (16, 64)"

    def nan(tmp):
        f = edit_weights(saelens_folder(tmp), lambda t: t["W_dec"].__setitem__((3, 3), float("nan")))
        return tmp / "sl", f"{f}: tensor W_dec contains NaN/inf"

    def nan_openai(tmp):
        sd = openai_state()
        sd["latent_bias"][0] = float("nan")
        torch.save(sd, tmp / "ae.pt")
        return tmp / "ae.pt", f"{tmp / 'ae.pt'}: tensor latent_bias contains NaN/inf"

    def missing_sparsify(tmp):
        sparsify_coder().save_to_disk(tmp / "sp")
        f = tmp / "sp" / "sae.safetensors"
        t = load_file(str(f))
        t.pop("b_dec")
        save_file(t, str(f))
        return tmp / "sp", f"{f}: tensor b_dec is missing"

    def pickled(tmp):
        torch.save({**openai_state(), "extra": Pickled()}, tmp / "ae.pt")
        return tmp / "ae.pt", f"holds pickled Python objects ({Pickled.__module__}.Pickled), which torch.load(weights_only=True) refuses"

    def not_torch(tmp):
        (tmp / "ae.pt").write_bytes(b"not a torch file at all")
        return tmp / "ae.pt", "is not a torch file torch.load(weights_only=True) can read"

    def unknown_format(tmp):
        (tmp / "x").mkdir()
        (tmp / "x" / "cfg.json").write_text(json.dumps({"hidden": 3}))
        return tmp / "x", "missing or unknown 'format'"

    def unknown_file(tmp):
        (tmp / "w.bin").write_bytes(b"\0" * 8)
        return tmp / "w.bin", "is a file of unknown SAE format"

    def unknown_arch(tmp):
        folder = saelens_folder(tmp)
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matching_pursuit"}))
        return folder, "SAELens architecture 'matching_pursuit' has no saescale equivalent"

    def unknown_activation(tmp):
        torch.save(openai_state("Identity"), tmp / "ae.pt")
        return tmp / "ae.pt", "activation 'Identity' has no saescale equivalent"

    def unknown_norm(tmp):
        folder = saelens_folder(tmp)
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
        return folder, "normalize_activations 'expected_average_only_in' has no saescale equivalent"

    def groupmax(tmp):
        sparsify_coder().save_to_disk(tmp / "sp")
        cfg = json.loads((tmp / "sp" / "cfg.json").read_text())
        (tmp / "sp" / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
        return tmp / "sp", "activation is 'groupmax'"

    return [missing, shape, nan, nan_openai, missing_sparsify, pickled, not_torch, unknown_format, unknown_file,
            unknown_arch, unknown_activation, unknown_norm, groupmax]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c.__name__)
def test_bad_foreign_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    (tmp_path / "in").mkdir()
    path, needle = case(tmp_path / "in")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SaescaleError) as e:
        load_sae(path)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert main(["export", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
