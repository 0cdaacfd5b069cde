"""Transcoders (saescale.sae.transcoder): a linear MLP stand-in recovered, gradients against a float64
reference, the SAELens round trip through the real package, the cache of both hooks, and the splice."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from saescale.data.synthetic import SyntheticConfig, SyntheticSource, feature_recovery
from saescale.errors import SaescaleError
from saescale.eval.recon import reconstruction_metrics
from saescale.sae.base import LossContext
from saescale.sae.config import SAEConfig
from saescale.sae.io import load_sae, save_sae
from saescale.sae.registry import build_sae
from saescale.threads import one_thread
from saescale.train.config import TrainConfig
from saescale.train.run import train_sae


class LinearMLP:
    """Rows [x | y] with y = A x + c: a linear stand-in for an MLP, on planted sparse inputs x."""

    def __init__(self, src: SyntheticSource, A: torch.Tensor, c: torch.Tensor):
        self.src, self.A, self.c = src, A, c
        self.d, self.d_target = src.d + A.shape[0], A.shape[0]

    def batches(self, batch_size: int, start: int = 0):
        for x in self.src.batches(batch_size, start):
            yield torch.cat([x, x @ self.A.T + self.c], dim=1)


def random_transcoder(arch: str = "relu", skip: bool = False, d: int = 12, d_out: int = 10, n: int = 24,
                      seed: int = 0):
    cfg = SAEConfig(arch=arch, n=n, k=4, d=d, d_out=d_out, skip=skip, normalize="mean_sq", norm_scale=0.37,
                    target_scale=2.9)
    sae = build_sae(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name != "b_enc" else 0.1))
        sae.normalize_decoder()
    return sae


@pytest.mark.slow
def test_a_transcoder_fitted_to_a_linear_mlp_recovers_it():
    """y = A x + c. A skip transcoder reproduces the map itself from x alone (held-out nMSE < 1%); a plain TopK transcoder's decoder rows recover the images A f_j of
    the planted input features (a random dictionary scores a mean max cosine of about 0.3)."""
    g = torch.Generator().manual_seed(0)
    src = SyntheticSource(SyntheticConfig(d=32, features=48, k=3, noise=0.0, alpha=0.0))
    A, c = torch.randn(24, 32, generator=g) / 32 ** 0.5, torch.randn(24, generator=g) * 0.1
    held = next(LinearMLP(src.heldout(), A, c).batches(2048))
    train = TrainConfig(tokens=300 * 256, batch_size=256, log_every=100, progress=False, init_tokens=2048, lr=3e-3)
    with one_thread():
        skip = train_sae(SAEConfig(n=96, k=3, normalize="mean_sq", skip=True), train, LinearMLP(src, A, c)).sae
        plain = train_sae(SAEConfig(n=96, k=3, normalize="mean_sq"), train, LinearMLP(src, A, c)).sae
    assert skip.cfg.d_out == 24 and skip.cfg.d == 32
    assert reconstruction_metrics(skip, [held])["nmse"] < 0.01
    x, y = held[:, :32], held[:, 32:]
    with torch.no_grad():  # from the input alone, in raw space: ŷ(x) = A x + c within 10% of the spread of y
        err = (skip(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert err < 0.01
    mmc, _ = feature_recovery(plain.W_dec.detach(), src.features @ A.T)
    assert mmc > 0.8
    assert reconstruction_metrics(plain, [held])["nmse"] < 0.35


def test_tied_init_reads_the_linear_maps_adjoint_of_each_decoder_row():
    """Tied: W_enc_i = A_n^T v_i / ||A_n^T v_i|| for y = A x + c (A recovered by the init's least squares, in
    the normalised spaces: A_n = s_y A / s_x); with A = I it is the SAE's tied init W_enc = W_dec; untied:
    rows unrelated to A_n^T v_i; b_pre = mean y_n and the loss scale in both."""
    g = torch.Generator().manual_seed(0)
    A, c = torch.randn(10, 12, generator=g), torch.randn(12, generator=g)
    x = torch.randn(4096, 12, generator=g) * torch.linspace(0.2, 3.0, 12)  # anisotropic input
    cos = {}
    for name, M, d_out in (("tied", A, 10), ("untied", A, 10), ("identity", torch.eye(12), 12)):
        rows = torch.cat([x, x @ M.T + c[:d_out]], dim=1)
        sae = build_sae(SAEConfig(n=64, k=4, d=12, d_out=d_out, normalize="mean_sq", norm_scale=0.5,
                                  target_scale=0.2))
        scale = sae.init_transcoder(rows, torch.Generator().manual_seed(1), tied=name != "untied")
        want = sae.W_dec.detach().double() @ (M.double() * (0.2 / 0.5))  # rows A_n^T v_i
        cos[name] = F.cosine_similarity(sae.W_enc.detach().double(), want, dim=-1)
        assert torch.allclose(sae.W_enc.norm(dim=-1), torch.ones(64), atol=1e-5)
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)
        y_n = rows[:, 12:].double() * 0.2
        assert torch.allclose(sae.b_pre.double(), y_n.mean(0), atol=1e-4)
        assert scale == pytest.approx(1 / (y_n - y_n.mean(0)).pow(2).sum(-1).mean().item(), rel=1e-6)
    assert cos["tied"].min() > 0.9999 and cos["identity"].min() > 0.9999
    assert cos["untied"].abs().mean() < 0.5


@pytest.mark.parametrize("arch", ["topk", "relu"])
@pytest.mark.parametrize("skip", [False, True])
def test_loss_and_gradients_match_a_float64_reference(arch, skip):
    """loss_terms against the maths written out densely in float64 (TopK with AuxK; ReLU with L1)."""
    sae = random_transcoder(arch, skip).double()
    rows = torch.randn(32, 22, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(sae.cfg.n, dtype=torch.bool)
    dead[::3] = True
    ctx = LossContext(dead, 4, 1 / 32, 0.7, False, 0.05)
    rows_n, _ = sae.normalize(rows)
    out = sae.loss_terms(rows_n, ctx)
    got = torch.autograd.grad(out.loss, list(sae.parameters()))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in sae.named_parameters()}
    x, y = rows[:, :12] * 0.37, rows[:, 12:] * 2.9
    pre = x @ params["W_enc"].T + params["b_enc"]
    base = params["b_pre"] + (x @ params["W_skip"].T if skip else 0)
    if arch == "topk":
        z = torch.zeros_like(pre).scatter(1, pre.topk(4, dim=1).indices, 1.0) * F.relu(pre)
    else:
        z = F.relu(pre)
    y_hat = z @ params["W_dec"] + base
    loss = 0.7 * (y - y_hat).pow(2).sum() / 32
    if arch == "topk":
        masked = pre.masked_fill(~dead, float("-inf"))
        za = torch.zeros_like(pre).scatter(1, masked.topk(4, dim=1).indices, 1.0) * F.relu(pre) * dead
        e = (y - y_hat).detach()  # AuxK as TopK's: target e + sg(b_pre), reconstruction ê + b_pre
        e_hat = za @ params["W_dec"] + params["b_pre"]
        loss = loss + (e + params["b_pre"].detach() - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum() / 32
    else:
        loss = loss + 0.05 * (z * params["W_dec"].norm(dim=1)).sum() / 32
    want = torch.autograd.grad(loss, list(params.values()))
    assert torch.allclose(out.loss, loss, rtol=1e-10, atol=1e-12)
    for (name, _), g, w in zip(sae.named_parameters(), got, want):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-10), name


@pytest.mark.parametrize("skip", [False, True])
def test_saelens_round_trip_through_the_real_package(tmp_path, skip):
    """Export -> sae_lens.SAE.load_from_disk computes the same outputs (1e-5) -> import gives the same SAE."""
    sae_lens = pytest.importorskip("sae_lens")
    from saescale.sae.formats.export import export_sae

    sae = random_transcoder("relu", skip)
    save_sae(sae, tmp_path / "mine", extra={"activations": {"model": "m", "hook": "layers.3.mlp.input",
                                                             "target_hook": "layers.3.mlp"}})
    export_sae(tmp_path / "mine", "saelens", tmp_path / "lens")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "lens"), device="cpu")
    assert type(theirs).__name__ == ("SkipTranscoder" if skip else "Transcoder")
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        mine, lens = sae(x), theirs(x)
        assert torch.allclose(theirs.encode(x), F.relu(sae.pre_acts(sae.normalize(x)[0])), atol=1e-5)
    assert lens.shape == (64, 10) and torch.allclose(mine, lens, atol=1e-5, rtol=1e-5)
    back = load_sae(tmp_path / "lens")
    assert back.transcoder and back.cfg == sae.cfg
    for name, t in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_round_trip_of_a_topk_transcoder_through_the_real_package(tmp_path, skip):
    """Export -> sparsify.SparseCoder.load_from_disk (transcode) gives the same code and output (1e-5) on raw
    inputs -> import gives the same transcoder; without saescale's record it imports unscaled, same outputs."""
    sparsify = pytest.importorskip("sparsify")
    from saescale.sae.formats.export import export_sae

    sae = random_transcoder("topk", skip, d=12, d_out=12)
    save_sae(sae, tmp_path / "mine", extra={"activations": {"model": "m", "hook": "layers.3.mlp.input",
                                                             "target_hook": "layers.3.mlp"}})
    export_sae(tmp_path / "mine", "sparsify", tmp_path / "sp")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "sp", device="cpu")
    assert theirs.cfg.transcode and (theirs.W_skip is not None) == skip
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(2)).double() * 3
    y = torch.randn(64, 12, generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        mine = sae(x.float()).double()
        out = theirs(x, y)
        code = sae.encode(x.float())
    assert out.sae_out.shape == (64, 12) and torch.allclose(mine, out.sae_out, atol=1e-5, rtol=1e-5)
    ours = torch.zeros(64, 24, dtype=torch.float64).scatter_(1, code.indices, code.values.double())
    lens = torch.zeros(64, 24, dtype=torch.float64).scatter_(1, out.latent_indices, out.latent_acts)
    assert torch.allclose(ours, lens, atol=1e-5)
    back = load_sae(tmp_path / "sp")
    assert back.transcoder and back.cfg == sae.cfg
    for name, t in sae.state_dict().items():
        assert torch.allclose(back.state_dict()[name], t, rtol=1e-6, atol=1e-7), name
    (tmp_path / "sp" / "saescale.json").unlink()  # a folder sparsify wrote itself: no saescale record
    bare = load_sae(tmp_path / "sp")
    assert bare.transcoder and bare.cfg.normalize == "none" and bare.cfg.skip == skip
    with torch.no_grad():
        assert torch.allclose(bare(x.float()).double(), mine, atol=1e-4, rtol=1e-4)
    # evaluating that foreign transcoder needs its model and both hook points: one line naming what is missing
    from saescale.commands.eval import EvalCommand, provenance

    with pytest.raises(SaescaleError, match="give --target-hook") as e:
        with provenance(EvalCommand(sae=str(tmp_path / "sp"), model="default", hook="layers.3.mlp.input")):
            pass
    assert "\n" not in str(e.value) and "hook_out 'sp'" in str(e.value)
    with provenance(EvalCommand(sae=str(tmp_path / "sp"), model="default", hook="layers.3.mlp.input",
                                  target_hook="layers.3.mlp")) as (folder, _):
        from saescale.sae.io import read_cfg

        assert read_cfg(folder)[1]["activations"]["target_hook"] == "layers.3.mlp"
    # one that records its hooks (saescale's own folder) refuses a different --target-hook instead of ignoring it
    with pytest.raises(SaescaleError, match="records its target hook 'layers.3.mlp'; drop --target-hook") as e:
        with provenance(EvalCommand(sae=str(tmp_path / "mine"), target_hook="layers.4.mlp")):
            pass
    assert "\n" not in str(e.value)


def test_sparsify_refuses_what_its_transcoders_cannot_hold_in_one_line(tmp_path):
    from saescale.sae.formats.export import export_sae

    for name, sae, match in (("relu", random_transcoder("relu", d=12, d_out=12), "whose transcoders are TopK"),
                             ("wide", random_transcoder("topk", d=12, d_out=10), "keep one width")):
        save_sae(sae, tmp_path / name)
        with pytest.raises(SaescaleError, match=match) as e:
            export_sae(tmp_path / name, "sparsify", tmp_path / f"{name}-sp")
        assert "\n" not in str(e.value) and not (tmp_path / f"{name}-sp").exists()


def test_saelens_refuses_a_topk_transcoder_in_one_line(tmp_path):
    from saescale.sae.formats.export import export_sae

    save_sae(random_transcoder("topk"), tmp_path / "mine")
    with pytest.raises(SaescaleError, match="not TopK") as e:
        export_sae(tmp_path / "mine", "saelens", tmp_path / "lens")
    assert "\n" not in str(e.value)


def test_bad_settings_and_widths_in_one_line():
    sae = random_transcoder("topk", True)
    assert sae.stored_shapes(24, 12, sae.cfg)["W_skip"] == (10, 12)
    with pytest.raises(SaescaleError, match="--normalize mean_sq"):
        SAEConfig(d_out=8, normalize="layernorm")
    with pytest.raises(SaescaleError, match="no transcoder form"):
        SAEConfig(arch="gated", d_out=8, normalize="mean_sq")
    with pytest.raises(SaescaleError, match=r"expected \(batch, 12\)"):
        sae.encode(torch.zeros(3, 7))
    with pytest.raises(SaescaleError, match="hold no target"):
        sae.target(torch.zeros(3, 12))
    assert sae(torch.ones(2, 22)).shape == sae(torch.ones(2, 12)).shape == (2, 10)  # a row's x part is used


# ---- hooks, cache and splice on language models ---------------------------------------------------------
def test_target_before_source_is_refused_in_one_line(tiny_lm):
    from saescale.activations.hooks import capture, check_target

    model, _ = tiny_lm
    check_target(model, "layers.2.mlp.input", "layers.2.mlp")
    check_target(model, "layers.1", "layers.4.mlp")
    for source, target in (("layers.2.mlp", "layers.2.mlp.input"), ("layers.3", "layers.1.mlp"),
                           ("layers.2.mlp", "layers.2.mlp")):
        with pytest.raises(SaescaleError) as e:
            check_target(model, source, target)
        assert "\n" not in str(e.value) and "--target-hook" in str(e.value)
    ids = torch.randint(0, 200, (2, 7))
    got = capture(model, ["layers.2.mlp.input", "layers.2.mlp"], ids)
    mlp = model.model.layers[2].mlp
    with torch.no_grad():
        assert torch.allclose(mlp(got["layers.2.mlp.input"]), got["layers.2.mlp"], atol=1e-6)


def test_cache_stores_both_sides_and_the_sae_path_is_unchanged(tiny_lm, tiny_lm_dir, tmp_path):
    from saescale.activations.cache import CacheReader, build_cache
    from saescale.activations.config import ActivationConfig
    from saescale.activations.manifest import open_shard, read_manifest

    model, _ = tiny_lm
    words = "the a of state union nation people year law war peace trade whale ship sea captain".split()
    g = torch.Generator().manual_seed(0)
    (tmp_path / "corpus").mkdir()
    docs = []
    for i in range(12):
        docs.append(tmp_path / "corpus" / f"doc{i}.txt")
        docs[-1].write_text(" ".join(words[j] for j in torch.randint(len(words), (300,), generator=g).tolist()))
    base = dict(model=str(tiny_lm_dir), corpus=",".join(map(str, docs)), context_len=16, n_tokens=600,
                val_fraction=0.2, cache_dtype="float32", shard_tokens=256, harvest_batch=8)
    tc = build_cache(ActivationConfig(hook="layers.3.mlp.input", target_hook="layers.3.mlp",
                                      cache_dir=str(tmp_path / "tc"), **base), lm=tiny_lm)
    sae = build_cache(ActivationConfig(hook="layers.3.mlp.input", cache_dir=str(tmp_path / "sae"), **base), lm=tiny_lm)
    m_tc, m_sae = read_manifest(tc), read_manifest(sae)
    assert m_tc["target_hook"] == "layers.3.mlp" and m_tc["d_target"] == 32
    assert "target_hook" not in m_sae and "d_target" not in m_sae and "target_hook" not in m_sae["config"]
    first = m_tc["splits"]["train"]["shards"][0]["file"]
    assert set(open_shard(tc / first)) == {"acts", "target", "tokens", "doc", "pos", "ctx"}
    assert set(open_shard(sae / first)) == {"acts", "tokens", "doc", "pos", "ctx"}
    r_tc, r_sae = CacheReader(tc), CacheReader(sae)
    rows, acts = r_tc.read_all()["acts"], r_sae.read_all()["acts"]
    assert r_tc.d == 64 and r_tc.d_target == 32 and torch.equal(rows[:, :32], acts)
    with torch.no_grad():
        assert torch.allclose(model.model.layers[3].mlp(rows[:, :32]), rows[:, 32:], atol=1e-5)
    assert torch.equal(next(r_tc.batches(50))[:, :32], next(r_sae.batches(50)))  # one shuffle for both sides
    target = CacheReader(tc, side="target")
    assert target.d == 32 and torch.equal(target.read_all()["acts"], rows[:, 32:])
    with pytest.raises(SaescaleError, match="target hook"):
        build_cache(ActivationConfig(hook="layers.3.mlp.input", target_hook="layers.4.mlp", cache_dir=str(tc), **base),
                    lm=tiny_lm)


@pytest.fixture(scope="module")
def mlp_rows(real_model, tmp_path_factory):
    """SmolLM2's layers.20 MLP: [input | output] rows (N, 1152) of 3,072 cached tokens of the embedded corpus."""
    from saescale.activations.cache import CacheReader, build_cache
    from saescale.activations.config import ActivationConfig

    folder = build_cache(ActivationConfig(hook="layers.20.mlp.input", target_hook="layers.20.mlp", n_tokens=3072,
                                          val_fraction=0.01, cache_dtype="float32", harvest_batch=8,
                                          cache_dir=str(tmp_path_factory.mktemp("mlp_cache"))), lm=real_model)
    return CacheReader(folder).read_all()["acts"]


class Rows:
    """Batches drawn with replacement from fixed rows (seeded by ``start``)."""

    def __init__(self, rows: torch.Tensor, d_target: int):
        self.rows, self.d, self.d_target = rows, rows.shape[1], d_target

    def batches(self, batch_size: int, start: int = 0):
        g = torch.Generator().manual_seed(start)
        while True:
            yield self.rows[torch.randint(len(self.rows), (batch_size,), generator=g)]


@pytest.mark.slow
def test_tied_init_leaves_fewer_transcoder_latents_dead_on_the_real_mlp(mlp_rows):
    """SmolLM2's layers.20 MLP, n = 1024, k = 16, 40 steps of 512: with independent random rows about 40 % of
    the latents are dead (no firing in the last 4,096 tokens; 64 % after 400k tokens at n = 4096, the table in
    docs/architectures.md); the tied init (W_enc = A^T W_dec) leaves a fraction of that."""
    dead = {}
    for tied in (True, False):
        train = TrainConfig(tokens=40 * 512, batch_size=512, log_every=1000, progress=False, init_tokens=2048,
                            tied_init=tied, dead_tokens=4096)
        with one_thread():
            res = train_sae(SAEConfig(n=1024, k=16, normalize="mean_sq", d_out=576), train, Rows(mlp_rows, 576))
        dead[tied] = res.metrics["dead_frac"]
    assert dead[False] > 0.25 and dead[True] < 0.6 * dead[False]


@pytest.mark.slow
def test_real_model_cache_and_splice_of_the_mlp(real_model, mlp_rows):
    """SmolLM2: the cache's target rows are the MLP applied to its input rows; splicing at layers.20.mlp an
    output computed from the captured layers.20.mlp.input gives the model's own logits (the MLP itself as the
    'transcoder'), and downstream loss splices a transcoder's output there."""
    from saescale.eval.downstream import downstream_metrics
    from saescale.eval.splice import Splicer

    model, tok = real_model
    rows = mlp_rows
    mlp = model.model.layers[20].mlp
    with torch.no_grad():
        assert torch.allclose(mlp(rows[:, :576]), rows[:, 576:], atol=1e-4)
    ids = torch.tensor([tok("The president said that the nation would", add_special_tokens=True)["input_ids"]])
    splicer = Splicer(model, "layers.20.mlp", "layers.20.mlp.input")
    logits, h = splicer.forward_with_capture(ids)
    with torch.no_grad():
        same = splicer.forward_from_hook(ids, mlp(splicer.last_source))
    assert torch.allclose(same, logits, atol=1e-4)
    # a random transcoder on these rows: downstream loss splices its output (KL > 0) and scores the model's own CE
    cfg = SAEConfig(n=64, k=4, d=576, d_out=576, normalize="mean_sq", norm_scale=1.0, target_scale=1.0)
    sae = build_sae(cfg)
    with torch.no_grad():
        sae.init_transcoder(rows, torch.Generator().manual_seed(0))
    positions = torch.arange(1, ids.shape[1])
    res = downstream_metrics(splicer, sae, ids, positions, rows[:, 576:].mean(0), batch=1)
    ce = F.cross_entropy(logits[0, 1:-1], ids[0, 2:])
    assert abs(res["ce_orig"] - ce.item()) < 1e-4 and res["scored_tokens"] == ids.shape[1] - 2
    assert res["kl_sae"] > 1e-3 and res["ce_sae"] != res["ce_orig"]


def test_train_command_refuses_transcoder_settings_without_a_target():
    from saescale.activations.config import ActivationConfig
    from saescale.commands.train import TrainCommand

    with pytest.raises(SaescaleError, match="--skip applies to transcoders only"):
        TrainCommand(sae=SAEConfig(skip=True))
    with pytest.raises(SaescaleError, match="--normalize mean_sq"):
        TrainCommand(activations=ActivationConfig(hook="layers.20.mlp.input", target_hook="layers.20.mlp"))
    TrainCommand(sae=SAEConfig(normalize="mean_sq", skip=True),
                 activations=ActivationConfig(hook="layers.20.mlp.input", target_hook="layers.20.mlp"))
