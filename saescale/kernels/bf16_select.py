"""Exact top-m from bfloat16 pre-activations: bf16 upper bounds, float32 rescoring, a certificate per row.

For x_c = x_n - b_pre (B, d), W_enc (n, d), b_enc (n,), all float32, the float32 selection keeps the
top-m of p = x_c W_enc^T + b_enc (B, n) per row (:func:`~saescale.kernels.select.select_topk_fp32`).
This one, with c = min(n, ``factor`` m):

1. keys: q = bf16 matmul of the inputs below (bf16 inputs, float32 accumulation, bf16 output: ~3x the
   float32 matmul rate on a CPU with AVX512-BF16), chunk by chunk; q_bj is an upper bound on latent j's
   float32 pre-activation (below); C_b = the c largest keys of row b, by the exact running top-k over
   chunks (:class:`~saescale.kernels.select.RunningTopK`, on float32 copies of the bf16 blocks);
2. rescoring: p̂_bj = x_c[b] . W_enc[j] + b_enc[j] in float32 for the c candidates only (a sampled
   matmul, B c d multiply-adds: c / n of the encoder's), and the top-m of those: (values, indices);
3. certificate: row b is accepted when up(q_b(c)) < t_b, q_b(c) its c-th largest key, t_b its m-th rescored
   value: no latent outside C_b can then reach t_b. Steps 2-3 first try the m + max(m / 4, 8) largest keys
   alone, the same argument with c = m1 + 1 (:func:`_rescore_certified`): most rows rescore ~5/8 of C_b;
4. rows not accepted go through 1-3 once more with twice the candidates (on their keys kept from the first
   pass when all (B, n) keys fit in ``KEEP_KEYS_BYTES``, else on their share of the matmul again), and
   rows still not accepted are selected again in float32 (counted in :func:`saescale.kernels.precision.record`).

The inputs. With x+ = [x_c[b], 1] and w+_j = [W_enc[j], b_enc[j]] (so p_bj = x+ . w+_j), one more column
carries each latent's rounding-error bound: x' = [x+, a_b, 0 ...], w'_j = [w+_j, v_j, 0 ...] (width d + 2
rounded up to a multiple of 16), v_j >= ||w+_j||, a_b from row b's own rounding error (below), so that
x' . w'_j = p_bj + a_b v_j, and the key of every latent is raised by at least its own error bound.

Why up(q_bj) bounds latent j's float32 value. Let u = 2^-8 (bf16's unit round-off), u' = 2^-24 (float32's),
g = (d' + 1) u' / (1 - (d' + 1) u') for sums of d' <= d + 16 terms (Higham, Thm 3.1), ~ a bf16 rounding
(|t~ - t| <= u |t| per coordinate), s_bj = fl32(x~' . w~'_j) the kernel's float32 sum and q_bj = bf16(s_bj):

    (1) |x~+ . w~+ - x+ . w+| <= ||x~+ - x+|| ||w~+|| + ||x+|| ||w~+ - w+|| <= ((1 + u) D_b + r X_b) ||w+_j||
        (Cauchy-Schwarz; D_b >= ||x~_c[b] - x_c[b]||, the row's actual rounding error, X_b >= ||x+||, and
        r = max_j ||w~+_j - w+_j|| / ||w+_j|| <= u, the weights' actual largest relative rounding error)
    (2) |s_bj - x~' . w~'_j| <= g ||x~'|| ||w~'_j|| <= g (1 + u)^2 (X_b + a_b) K ||w+_j||,  K = sqrt(1 + (1 + g)^4)
    (3) a~_b v~_j >= (1 - u)^2 a_b ||w+_j||
    (4) |p̂_bj - p_bj| <= g X_b ||w+_j||  for any float32 evaluation p̂ of p
    (5) s_bj <= up(q_bj) = q_bj / (1 - u) if q_bj >= 0 else q_bj / (1 + u)

give p̂_bj <= s_bj + ||w+_j|| [(1 + u) D_b + (r + g) X_b + g (1 + u)^2 K (X_b + a_b) - (1 - u)^2 a_b] <= up(q_bj)
as soon as the bracket is <= 0, i.e. for

    a_b = ((1 + u) D_b + (r + g + g (1 + u)^2 K) X_b) / ((1 - u)^2 - g (1 + u)^2 K).

(Every norm is computed in float32 and multiplied by 1 + g, so that it bounds the exact one.) Every latent j
outside C_b has q_bj <= q_b(c) (ties at the c-th place included) and up is increasing, so under the
certificate its float32 value is below t_b: the m largest float32 values are among the candidates, and the
rescored top-m is the float32 top-m. The selected latents and values then equal the float32 path's, except
where two pre-activations lie within float32 rounding (~1e-7 relative) of each other at the m-th place (two
float32 evaluations may order such a near-tie differently, as two matmul libraries do). With c = n every row
is accepted. NaN or inf never satisfy the strict inequality: such rows go to the float32 path. AuxK's
top-k_aux among the dead latents is the same procedure with the live latents' keys at -inf
(c_aux = min(n_dead, factor k_aux)). The analysis assumes what bf16 matmuls with float32 accumulation do (one
rounding, at the output); a test checks (5)'s conclusion entry by entry on this machine's kernel
(``tests/kernels/test_bf16_select.py``).

The key's raise a_b v_j is about (D_b / ||x_b|| + r) ||x_b|| ||w+_j||, ~0.8 u ||x_b|| ||w+_j|| (rounding errors
are ~0.4 u of a vector's norm): each latent is bounded by its own norm, so one large
encoder row does not loosen every other latent's bound. ``certify=False`` (``--precision autocast``): a_b = 0,
c = m, no certificate, no fallback: the top-m of the bf16 pre-activations (approximate near the m-th value),
rescored in float32.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from saescale.kernels import precision
from saescale.kernels.csr import rowwise_dots
from saescale.kernels.select import DEFAULT_CHUNK, RunningTopK, Selection, select_topk_fp32
from saescale.kernels.workspace import scratch
from saescale.threads import one_thread

U_BF16 = 2.0**-8
U_FP32 = 2.0**-24
CANDIDATE_FACTOR = 2  # c = 2 m candidates per row (rows not certified: 4 m, then float32)


def fp32_sum_error(terms: int) -> float:
    """g of the module docstring: a float32 sum of ``terms`` terms is within g times the sum of their magnitudes."""
    return (terms + 1) * U_FP32 / (1 - (terms + 1) * U_FP32)


def augmented(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, certify: bool = True) -> tuple[Tensor, Tensor]:
    """bf16 x' (B, d') and w' (n, d') of the module docstring (w' in reused memory); with ``certify`` False the
    error column is 0 (plain bf16 pre-activations)."""
    (B, d), n = x_c.shape, W_enc.shape[0]
    width = (d + 2 + 15) // 16 * 16
    g = fp32_sum_error(width)
    xb = torch.zeros(B, width, dtype=torch.bfloat16, device=x_c.device)
    xb[:, :d] = x_c
    xb[:, d] = 1.0
    Wb = scratch("bf16.W_enc", (n, width), torch.bfloat16, x_c.device)
    Wb[:, :d] = W_enc
    Wb[:, d] = b_enc
    Wb[:, d + 2 :] = 0.0
    if not certify:
        Wb[:, d + 1] = 0.0
        return xb, Wb
    norm = (torch.linalg.vector_norm(W_enc, dim=1).square() + b_enc.square()).sqrt() * (1 + g) ** 2  # >= ||w+_j||
    err = torch.empty_like(norm)  # >= ||w~+_j - w+_j||, the row's actual rounding error (exact in float32)
    for s in range(0, n, 4096):  # latent chunks: no (n, d) temporary
        e = slice(s, min(s + 4096, n))
        err[e] = (torch.linalg.vector_norm(Wb[e, :d].float() - W_enc[e], dim=1).square()
                  + (Wb[e, d].float() - b_enc[e]).square()).sqrt() * (1 + g) ** 2
    ratio = (err / norm.clamp_min(torch.finfo(norm.dtype).tiny)).max().clamp(max=U_BF16).item()  # r <= u
    Wb[:, d + 1] = norm  # v_j
    u, K = U_BF16, (1 + (1 + g) ** 4) ** 0.5
    D = torch.linalg.vector_norm(xb[:, :d].float() - x_c, dim=1) * (1 + g)  # x~ - x is exact in float32
    X = (x_c.square().sum(1) + 1).sqrt() * (1 + g) ** 2
    a = ((1 + u) * D + (ratio + g + g * (1 + u) ** 2 * K) * X) / ((1 - u) ** 2 - g * (1 + u) ** 2 * K)
    xb[:, d + 1] = a
    return xb, Wb


def upper(q: Tensor) -> Tensor:
    """up(q) of the module docstring: an upper bound on the float32 sum that rounded to bf16 value q (float32 out)."""
    q = q.float()
    return torch.where(q >= 0, q / (1 - U_BF16), q / (1 + U_BF16))


KEEP_KEYS_BYTES = 1 << 30  # the (B, n) bf16 keys are kept for a retry when they fit in 1 GiB (n = 2^17 at B = 4096)


@torch.no_grad()
def select_topk_bf16(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, m: int, dead: Tensor | None = None,
                     k_aux: int = 0, chunk: int = DEFAULT_CHUNK, certify: bool = True,
                     factor: int = CANDIDATE_FACTOR, retry: bool = True) -> Selection:
    """The float32 selection's :class:`Selection` (values sorted descending, float32) from a bf16 matmul;
    see the module docstring. Same arguments as :func:`~saescale.kernels.select.select_topk_fp32`.

    A retry (step 4) reads the rows' keys back from the first pass when all (B, n) keys fit in
    ``KEEP_KEYS_BYTES``, else computes the rows' share of the matmul again."""
    B, n = x_c.shape[0], W_enc.shape[0]
    small = B * n * 2 <= KEEP_KEYS_BYTES
    # blocks of 4 chunks while all keys fit (one (4096, 16384) block at the default shape: the top-c over one
    # block is ~10 % faster than over two), else 2 (bounded memory at n = 2^20)
    wide_chunk = min((4 if small else 2) * chunk, n)
    n_dead = int(dead.sum()) if dead is not None and k_aux else 0
    xb, Wb = augmented(x_c, W_enc, b_enc, certify)
    retry = retry and factor * m < n  # with c = n every row is certified: nothing to retry
    keep = certify and retry and small
    keys = scratch("bf16.keys", (B * n,), torch.bfloat16, x_c.device) if keep else None
    blocks = _matmul_blocks(xb, Wb, wide_chunk, keys)
    d = x_c.shape[1]
    a, v = xb[:, d + 1].float(), Wb[:, d + 1].float()  # the key raise of latent j in row b is a_b v_j
    sel, ok = _select(x_c, W_enc, b_enc, m, dead, k_aux, n_dead, blocks, wide_chunk, certify, factor, a, v)
    bad = (~ok).nonzero()[:, 0] if ok is not None and not bool(ok.all()) else None
    if bad is None:
        precision.record(B, 0)
        return sel

    def in_fp32(rows: Tensor) -> Selection:
        return select_topk_fp32(rows, W_enc, b_enc, m, dead if n_dead else None, k_aux if n_dead else 0, chunk)

    if retry:  # those rows once more with twice the candidates; then float32
        rows = x_c.index_select(0, bad)
        again = _stored_blocks(keys, bad, B, n, wide_chunk) if keep else _matmul_blocks(
            xb.index_select(0, bad), Wb, wide_chunk, None)
        redo, ok2 = _select(rows, W_enc, b_enc, m, dead, k_aux, n_dead, again, wide_chunk, True, 2 * factor,
                            a.index_select(0, bad), v)
        still = (~ok2).nonzero()[:, 0]
        if still.numel():
            _put(redo, still, in_fp32(rows.index_select(0, still)))
        precision.record(B, int(still.numel()))
    else:
        precision.record(B, int(bad.numel()))
        redo = in_fp32(x_c.index_select(0, bad))
    _put(sel, bad, redo)
    return sel


def _put(sel: Selection, rows: Tensor, other: Selection) -> None:
    """sel's rows ``rows`` := other's rows, in place (aux included when sel has aux columns)."""
    sel.values[rows], sel.indices[rows] = other.values, other.indices
    if sel.aux_values.shape[1]:
        sel.aux_values[rows], sel.aux_indices[rows] = other.aux_values, other.aux_indices


def _matmul_blocks(xb: Tensor, Wb: Tensor, wide_chunk: int, keys: Tensor | None) -> Iterator[tuple[int, Tensor]]:
    """(start, q16 (B, w)) for each latent chunk: the bf16 keys x' w'^T, written into ``keys`` (flat, B n)
    when given (chunk after chunk, each block contiguous), else into one reused buffer."""
    B, n = xb.shape[0], Wb.shape[0]
    buf = scratch("bf16.block", (B * wide_chunk,), torch.bfloat16, xb.device) if keys is None else None
    for start in range(0, n, wide_chunk):
        stop = min(start + wide_chunk, n)
        out = keys[B * start: B * stop] if keys is not None else buf[: B * (stop - start)]
        q16 = out.view(B, stop - start)
        torch.mm(xb, Wb[start:stop].T, out=q16)  # (B, chunk) bf16: x' w'^T, bias included
        yield start, q16


def _stored_blocks(keys: Tensor, rows: Tensor, B: int, n: int, wide_chunk: int) -> Iterator[tuple[int, Tensor]]:
    """The first pass's kept keys of ``rows`` only, chunk by chunk (no matmul)."""
    for start in range(0, n, wide_chunk):
        stop = min(start + wide_chunk, n)
        yield start, keys[B * start: B * stop].view(B, stop - start).index_select(0, rows)


def _select(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, m: int, dead: Tensor | None, k_aux: int, n_dead: int,
            blocks: Iterator[tuple[int, Tensor]], wide_chunk: int, certify: bool, factor: int,
            a: Tensor, v: Tensor) -> tuple[Selection, Tensor | None]:
    """Steps 1-3 of the module docstring on the keys ``blocks`` yields: the selection and each row's
    certificate (None without ``certify``); a (B,) and v (n,) are the error column's a_b and v_j."""
    B, n = x_c.shape[0], W_enc.shape[0]
    c = min(n, factor * m) if certify else m
    c_aux = (min(n_dead, factor * k_aux) if certify else k_aux) if n_dead else 0
    main = RunningTopK(B, c, x_c, wide_chunk, "bf16.top")  # float32 buffers: max and topk are faster on them
    aux = RunningTopK(B, c_aux, x_c, wide_chunk, "bf16.aux")
    wide = scratch("bf16.wide", (B * wide_chunk,), torch.float32, x_c.device)
    masked = scratch("bf16.masked", (B * wide_chunk,), torch.float32, x_c.device) if c_aux else None
    neg_inf = x_c.new_full((), float("-inf"))
    for start, q16 in blocks:
        q = wide[: q16.numel()].view_as(q16).copy_(q16)  # exact: every bf16 value is a float32 value
        main.update(q, start)
        if c_aux and bool(dead[start: start + q.shape[1]].any()):
            q_aux = masked[: q.numel()].view_as(q)
            torch.where(dead[start: start + q.shape[1]], q, neg_inf, out=q_aux)
            aux.update(q_aux, start)
    q_top, cand = main.result()
    raised = a[:, None] * v[cand[:, :m]] if certify else None  # (B, m): each candidate's key raise a_b v_j
    values, indices, ok = _rescore_certified(x_c, W_enc, b_enc, q_top, cand, m, certify, c < n, raised)
    aux_values, aux_indices = x_c.new_empty(B, 0), indices.new_empty(B, 0)
    if c_aux:
        q_aux, cand_aux = aux.result()
        raised = a[:, None] * v[cand_aux[:, :k_aux]] if certify else None
        aux_values, aux_indices, ok_aux = _rescore_certified(x_c, W_enc, b_enc, q_aux, cand_aux, k_aux, certify,
                                                             c_aux < n_dead, raised)
        if ok is not None:
            ok &= ok_aux
    return Selection(values, indices, aux_values, aux_indices), ok


def _rescore_certified(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, q_top: Tensor, cand: Tensor, m: int,
                       certify: bool, outside: bool, raised: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Steps 2-3 for candidates ``cand`` (B, c) with keys ``q_top`` (B, c) sorted descending: the rescored
    top-m (values, indices) and each row's certificate (None without ``certify``); ``outside`` says whether
    latents outside the candidates exist.

    Rescoring runs in two stages. First the m1 = m + max(m / 4, 8) candidates with the largest keys: when
    up(q_b(m1 + 1)) < t1_b, t1_b the m-th of their float32 values, no other latent (candidate or not: every
    other key is <= q_b(m1 + 1)) can reach t1_b, and their top-m is the float32 top-m. Rows where this fails
    rescore all c candidates and face step 3's certificate, up(q_b(c)) < t_b. A row accepted at the first
    stage has the certificate of c = m1 + 1 candidates; the second keeps factor-m's margin for the rest.

    ``raised`` (B, m), each candidate's key raise a_b v_j (docstring above), predicts which rows the first
    stage would fail: the m-th candidate's value is about its key less its raise, so a row whose
    q_b(m) - a_b v_(m) is not above up(q_b(m1 + 1)) goes straight to all c candidates. The prediction only
    saves time; every answer is still certified.
    """
    c = cand.shape[1]
    m1 = m + max(m // 4, 8)
    if not certify or m1 >= c:
        values, indices = _rescore(x_c, W_enc, b_enc, cand, m)
        if not certify:
            return values, indices, None
        ok = upper(q_top[:, -1]) < values[:, -1] if outside else torch.ones_like(values[:, 0], dtype=torch.bool)
        return values, indices, ok
    B = cand.shape[0]
    values, indices = x_c.new_empty(B, m), cand.new_empty(B, m)
    ok = torch.zeros(B, dtype=torch.bool, device=x_c.device)
    first = upper(q_top[:, m1])
    hopeful = q_top[:, m - 1] - raised[:, m - 1] > first if raised is not None else torch.ones_like(ok)
    rows = hopeful.nonzero()[:, 0]
    if rows.numel():
        v1, i1 = _rescore(x_c.index_select(0, rows), W_enc, b_enc, cand.index_select(0, rows)[:, :m1], m)
        values[rows], indices[rows] = v1, i1
        ok[rows] = first.index_select(0, rows) < v1[:, -1]
    rows = (~ok).nonzero()[:, 0]
    if rows.numel():
        v2, i2 = _rescore(x_c.index_select(0, rows), W_enc, b_enc, cand.index_select(0, rows), m)
        values[rows], indices[rows] = v2, i2
        ok[rows] = upper(q_top.index_select(0, rows)[:, -1]) < v2[:, -1] if outside else True
    return values, indices, ok


def _rescore(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, cand: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """float32 pre-activations of the candidates (B, c) and their top-m, sorted descending."""
    exact = rowwise_dots(x_c, W_enc, cand)
    exact += b_enc[cand]
    with one_thread():
        values, pos = exact.topk(m, dim=1, sorted=True)
        return values, cand.gather(1, pos)
