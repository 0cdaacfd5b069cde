"""The one pass equals plain dense references on a tiny cache: top contexts and their rows, histograms,
densities, quantile samples, the random contexts' codes; logit lens and neighbours equal brute force."""

from __future__ import annotations

import pytest
import torch

from saescale.activations.cache_read import CacheReader
from saescale.dashboard.collect import EDGES, LO, OCTAVES, STEP, collect, fine_bin
from saescale.dashboard.logit_lens import logit_lens
from saescale.dashboard.neighbours import nearest
from saescale.sae.io import load_sae
from tests.dashboard.dash_helpers import tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")
TOP = 6


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir, tiny_lm, tmp_path_factory):
    sae_dir, cache = tiny_setup(tmp_path_factory.mktemp("dash_collect"), tiny_lm_dir, tiny_lm)
    sae = load_sae(sae_dir).eval()
    reader = CacheReader(cache)
    col = collect(sae, reader.iter_shards(), first_pos=1, width=reader.manifest["tokens_per_context"], top=TOP, batch=5,
                  rand=8, seed=3)
    return sae, reader, col


def dense_reference(sae, reader):
    """z (N, n) of every token of the split, and the rows' context ids / positions (a plain dense encode)."""
    rows = reader.read_all()
    with torch.no_grad():
        code = sae.encode(rows["acts"])
    z = torch.zeros(len(rows["acts"]), sae.cfg.n).scatter_add_(1, code.indices, code.values.clamp_min(0))
    return z, rows["ctx"], rows["pos"]


def test_cache_has_contexts_across_shards(tiny):
    _, reader, col = tiny
    assert len(reader.shards) >= 3 and reader.n_tokens % col.width  # contexts cut by shard ends and by the budget
    assert col.n_tokens == reader.n_tokens


def test_counts_histogram_and_max_equal_dense(tiny):
    sae, reader, col = tiny
    z, _, _ = dense_reference(sae, reader)
    fired = z > 0
    assert torch.equal(col.fires, fired.sum(0))
    assert torch.equal(col.hist.sum(1), col.fires)  # every firing token in exactly one bin
    assert torch.allclose(col.act_sum, z.double().sum(0), rtol=1e-5)
    assert torch.allclose(col.max, z.max(0).values, rtol=1e-5, atol=1e-7)
    for i in range(0, sae.cfg.n, 7):
        v = z[fired[:, i], i]
        assert torch.equal(col.hist[i], torch.bincount(fine_bin(v), minlength=col.hist.shape[1]))


def test_top_contexts_and_rows_equal_brute_force(tiny):
    sae, reader, col = tiny
    z, ctx, pos = dense_reference(sae, reader)
    ids = ctx.unique()
    for i in range(sae.cfg.n):
        best = torch.stack([z[ctx == c, i].max() for c in ids])
        order = best.argsort(descending=True, stable=True)
        want = [int(ids[j]) for j in order if best[j] > 0][:TOP]
        got = [c for c in col.top_ctx[i].tolist() if c >= 0]
        assert len(got) == len(want) == len(set(got)), i
        # the same top values, highest first (contexts with equal maxima may come in either order)
        assert torch.allclose(col.top_val[i, : len(got)], best[order[: len(got)]], rtol=1e-5, atol=1e-7)
        by_ctx = dict(zip(ids.tolist(), best.tolist()))
        assert all(abs(by_ctx[c] - float(v)) <= 1e-6 for c, v in zip(got, col.top_val[i].tolist())), i
        for s, c in enumerate(got):
            sel = ctx == c
            row = torch.zeros(col.width)
            row[pos[sel] - 1] = z[sel, i]
            assert torch.allclose(col.top_rows[i, s], row, rtol=1e-5, atol=1e-7), (i, c)


def test_quantile_samples_are_firing_tokens_of_their_bin(tiny):
    sae, reader, col = tiny
    z, ctx, pos = dense_reference(sae, reader)
    seen = 0
    for i in range(sae.cfg.n):
        per_octave = col.hist[i].view(OCTAVES, STEP).sum(1)
        for o in range(OCTAVES):
            c = int(col.s_ctx[i, o])
            assert (c >= 0) == bool(per_octave[o] > 0)  # a sample exactly where the octave has firing tokens
            if c < 0:
                continue
            seen += 1
            v = float(col.s_val[i, o])
            lo, hi = 2.0 ** (LO + o), 2.0 ** (LO + o + 1)
            assert (lo <= v < hi) or (o == 0 and v < hi) or (o == OCTAVES - 1 and v >= lo)
            sel = (ctx == c) & (pos == int(col.s_pos[i, o]) + 1)
            assert torch.allclose(z[sel, i], torch.tensor([v]), rtol=1e-5)
            assert float(col.s_rows[i, o, int(col.s_pos[i, o])]) == v
    assert seen > sae.cfg.n  # several octaves per latent


def test_random_contexts_keep_their_codes(tiny):
    sae, reader, col = tiny
    z, ctx, pos = dense_reference(sae, reader)
    kept = [c for c in col.rand_ctx.tolist() if c >= 0]
    assert len(kept) == len(set(kept)) == 8
    for j, c in enumerate(col.rand_ctx.tolist()):
        sel = ctx == c
        dense = torch.zeros(col.width, sae.cfg.n).scatter_add_(1, col.rand_indices[j], col.rand_values[j])
        assert torch.allclose(dense[pos[sel] - 1], z[sel], rtol=1e-5, atol=1e-7)


def test_seeded_pass_is_reproducible(tiny):
    sae, reader, col = tiny
    again = collect(sae, reader.iter_shards(), 1, col.width, TOP, batch=5, rand=8, seed=3)
    for name in ("top_ctx", "top_rows", "hist", "s_ctx", "s_pos", "s_rows", "rand_ctx"):
        assert torch.equal(getattr(again, name), getattr(col, name)), name


def test_logit_lens_and_neighbours_equal_brute_force(tiny, tiny_lm):
    sae, _, _ = tiny
    model, _ = tiny_lm
    W = sae.W_dec.detach()
    lens = logit_lens(model, W, top=5, block=7)
    g = model.model.norm.weight.detach()
    eff = (W * g) @ model.get_output_embeddings().weight.detach().T
    assert torch.equal(lens.pos_ids, eff.topk(5, dim=1).indices)
    assert torch.equal(lens.neg_ids, eff.topk(5, dim=1, largest=False).indices)
    assert torch.equal(lens.hist_counts.sum(1), torch.full((sae.cfg.n,), eff.shape[1]))
    assert lens.final_norm == "LlamaRMSNorm weight"
    ids, cos = nearest(W, 4, block=10)
    u = torch.nn.functional.normalize(W, dim=1)
    sim = u @ u.T
    sim.fill_diagonal_(-2)
    want = sim.topk(4, dim=1)
    assert torch.equal(ids, want.indices) and torch.allclose(cos, want.values)


def test_bins_cover_the_edges():
    v = torch.tensor(EDGES[:-1]) * 1.0001
    assert torch.equal(fine_bin(v), torch.arange(len(EDGES) - 1))
