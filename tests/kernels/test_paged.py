"""Tests for the paged KV cache's ops (kernels.kv_pool, paged_write, paged_attention, paged_copy_blocks):
the cpu backend against the readable reference (kernels/ref.py, which gathers each row's keys through
its table into a padded array and runs the reference flash_attention with per-row lengths), on every
instruction set this CPU can run (avx512 / avx2 / generic).

Rules they keep:
- A backend that can't run here is skipped with the reason from `available_backends()`, never faked.
- The reference itself is checked against the reference flash_attention over each row's keys laid out
  densely, and the cpu decode path against kernels.decode_attention_rows on the same keys (an
  independent kernel: per-row contiguous buffers, no tables).
- The cpu pools start with NaN in every slot no row has written, so a kernel that reads a slot outside
  a row's tokens poisons its output; after an op the written slots must hold exactly the new keys and
  every other slot must still be NaN (nothing else written).
- Shapes: block sizes 1 / 16 / 32, ragged lengths 0..2048 (empty rows, rows ending on a block boundary),
  GQA 7 (14/2), 1 (4/4), 7 (7/1), 2 (6/3), head dims 64 / 48 / 32 / 24 / 16, blocks shared by two rows
  (read only), tables out of order with -1 padding, decode (L = 1) and chunks of L = 3 / 17 / 64 with
  and without causal masking; the step's keys stored by the attention itself or by paged_write first.
- In place: steps built lazily on the same pools (ordered by `after` and mx.depends) and evaluated once
  give what evaluating each step at once gives; a fresh pool is not backed by memory until written.
"""

from __future__ import annotations

import math
import random

import mlx.core as mx
import numpy as np
import pytest

from tests.utils import assert_allclose, require
from tiny_llm_playground import kernels
from tiny_llm_playground.kernels import cpu as kcpu
from tiny_llm_playground.kernels import ref

RTOL, ATOL = 2e-5, 2e-5  # float32: exp and sums in another order


class Batch:
    """A random batch of rows in a paged cache: each row's token history (keys and values), its blocks
    (a random permutation of the pool: out of order, not contiguous; -1 past them), and the pools'
    contents before the step. share=(a, b, n): row b's first n blocks are row a's (same tokens)."""

    def __init__(self, lengths, L, bs, H, H_kv, D, seed, share=None, spare=3, pad=2):
        rng = np.random.default_rng(seed)
        self.lengths, self.L, self.bs, self.H, self.H_kv, self.D = list(lengths), L, bs, H, H_kv, D
        B = len(lengths)
        need = [-(-n // bs) for n in lengths]
        self.num_blocks = sum(need) + spare
        free = [int(b) for b in rng.permutation(self.num_blocks)]
        rows = [[free.pop() for _ in range(n)] for n in need]
        S = max([*lengths, 1])
        self.keys = rng.standard_normal((B, H_kv, S, D)).astype(np.float32)
        self.values = rng.standard_normal((B, H_kv, S, D)).astype(np.float32)
        if share is not None:
            a, b, n = share
            rows[b][:n] = rows[a][:n]
            self.keys[b, :, : n * bs] = self.keys[a, :, : n * bs]
            self.values[b, :, : n * bs] = self.values[a, :, : n * bs]
        self.rows = rows
        self.tables_np = np.full((B, max([*need, 1]) + pad), -1, dtype=np.int32)
        for b, r in enumerate(rows):
            self.tables_np[b, : len(r)] = r
        self.tables = mx.array(self.tables_np)
        self.lengths_mx = mx.array(self.lengths, dtype=mx.int32)
        q = rng.standard_normal((B, H, L, D)).astype(np.float32)
        self.q = mx.array(q)
        # The step's keys: row b's positions n - L .. n - 1 (zeros for an empty row: never stored).
        kn = np.zeros((B, H_kv, L, D), np.float32)
        vn = np.zeros((B, H_kv, L, D), np.float32)
        for b, n in enumerate(self.lengths):
            if n:
                kn[b], vn[b] = self.keys[b, :, n - L : n], self.values[b, :, n - L : n]
        self.k, self.v = mx.array(kn), mx.array(vn)

    def positions(self, upto: str):
        """(row, position, block, slot) of each row's tokens before the step ("prefix") or all ("all")."""
        rows = [np.full(n if upto == "all" or n == 0 else n - self.L, b) for b, n in enumerate(self.lengths)]
        b = np.concatenate(rows).astype(np.int64)
        p = np.concatenate([np.arange(len(r)) for r in rows]).astype(np.int64)
        return b, p, self.tables_np[b, p // self.bs], p % self.bs

    def pools(self, fill: float, upto: str = "prefix") -> tuple[mx.array, mx.array]:
        """Fresh pools holding each row's tokens before the step ("prefix") or all of them ("all");
        `fill` in every other slot."""
        shape = (self.num_blocks, self.bs, self.H_kv, self.D)
        kp, vp = np.full(shape, fill, np.float32), np.full(shape, fill, np.float32)
        b, p, blk, slot = self.positions(upto)
        kp[blk, slot], vp[blk, slot] = self.keys[b, :, p], self.values[b, :, p]  # (tokens, H_kv, D)
        return mx.array(kp), mx.array(vp)

    def check_pools(self, kp: mx.array, vp: mx.array, what: str) -> None:
        """Every row's tokens where its table says, exactly, and NaN in every slot no row holds."""
        kp, vp = np.array(kp), np.array(vp)
        b, p, blk, slot = self.positions("all")
        assert np.array_equal(kp[blk, slot], self.keys[b, :, p]), f"{what}: keys"
        assert np.array_equal(vp[blk, slot], self.values[b, :, p]), f"{what}: values"
        used = np.zeros(kp.shape[:2], bool)
        used[blk, slot] = True
        assert np.isnan(kp[~used]).all() and np.isnan(vp[~used]).all(), f"{what}: a slot no row holds was written"

    def dense_reference(self, scale: float, causal: bool) -> mx.array:
        """The reference flash_attention over each row's keys laid out densely (no tables)."""
        return ref.flash_attention(self.q, mx.array(self.keys), mx.array(self.values), scale, causal, self.lengths_mx)


# (block size, H, H_kv, D, lengths after the step, L, share)
CASES = [
    (16, 14, 2, 64, [0, 1, 16, 37, 2048, 515], 1, (4, 5, 16)),  # decode, GQA 7, shared 256-token prefix
    (1, 4, 4, 32, [5, 0, 64, 300], 1, None),  # block size 1, MHA
    (32, 7, 1, 64, [32, 96, 1000, 0, 1], 1, (1, 2, 2)),  # GQA 7/1, rows ending on a block boundary
    (16, 6, 3, 48, [100, 7, 2000], 1, None),  # D a multiple of 8, not of 16
    (16, 14, 2, 64, [17, 0, 48, 200], 17, (2, 3, 1)),  # a chunk over a cached prefix
    (32, 4, 4, 64, [64, 128, 97], 64, None),  # a whole first chunk of 64 (row 0)
    (1, 7, 1, 16, [3, 10, 0, 130], 3, None),
    (16, 4, 2, 24, [40, 3, 0], 3, None),  # D not a multiple of 8 (the compiled loops)
    (32, 14, 2, 64, [2048, 64, 1100], 64, None),  # long rows, 64 queries
]


def _random_case(seed: int):
    """Five ragged decode rows in 0..2048, one empty and one ending on a block boundary."""
    rnd = random.Random(seed)
    lengths = [0, 16 * rnd.randint(1, 128)] + [rnd.randint(1, 2048) for _ in range(3)]
    rnd.shuffle(lengths)
    return (16, 14, 2, 64, lengths, 1, None)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", [*CASES, _random_case(1), _random_case(2)], ids=lambda c: f"bs{c[0]}-L{c[5]}")
def test_paged_attention_matches_ref(case, causal, isas) -> None:
    """Fused (the attention stores the step's keys), separate (paged_write, then attention with k=None)
    and already stored (the pools hold every token): cpu against ref on every ISA, and the pools."""
    bs, H, H_kv, D, lengths, L, share = case
    batch = Batch(lengths, L, bs, H, H_kv, D, seed=sum(lengths) + L, share=share)
    scale = 1.0 / math.sqrt(D) if causal else 0.3
    kr, vr = batch.pools(0.0)
    want, (kr, vr) = kernels.paged_attention(
        batch.q, batch.k, batch.v, kr, vr, batch.tables, batch.lengths_mx, scale=scale, causal=causal, backend="ref"
    )
    assert_allclose(want, batch.dense_reference(scale, causal), RTOL, ATOL, "ref vs dense flash_attention")
    args = (batch.tables, batch.lengths_mx)
    for isa in isas():
        for mode in ("fused", "separate", "stored"):
            kp, vp = batch.pools(math.nan, "all" if mode == "stored" else "prefix")
            if mode == "fused":
                out, pools = kernels.paged_attention(
                    batch.q, batch.k, batch.v, kp, vp, *args, scale=scale, causal=causal, backend="cpu"
                )
            else:
                after = []
                if mode == "separate":
                    done, pools = kernels.paged_write(batch.k, batch.v, kp, vp, *args, backend="cpu")
                    assert done.shape == (0,)
                    after = [done]
                out, pools = kernels.paged_attention(
                    batch.q, None, None, kp, vp, *args, scale=scale, causal=causal, backend="cpu", after=after
                )
            assert pools[0] is kp and pools[1] is vp, "the cpu backend hands back the very pools"
            assert out.shape == (len(lengths), H, L, D)
            what = f"{isa} {mode} {case} causal={causal}"
            assert_allclose(out, want, RTOL, ATOL, what)
            kp, vp = mx.depends([kp, vp], [out])
            batch.check_pools(kp, vp, what)
    assert_allclose(kr, batch.pools(0.0, "all")[0], 0, 0, "ref's pools")


def test_paged_write_matches_ref(isas) -> None:
    """paged_write alone, chunks of 5 tokens into ragged rows (one empty: it stores nothing)."""
    batch = Batch([5, 0, 21, 32, 70], 5, 16, 4, 2, 64, seed=3)
    _, (kr, _) = kernels.paged_write(batch.k, batch.v, *batch.pools(0.0), batch.tables, batch.lengths_mx, backend="ref")
    assert_allclose(kr, batch.pools(0.0, "all")[0], 0, 0, "ref")
    for isa in isas():
        kp, vp = batch.pools(math.nan)
        done, _ = kernels.paged_write(batch.k, batch.v, kp, vp, batch.tables, batch.lengths_mx, backend="cpu")
        batch.check_pools(*mx.depends([kp, vp], [done]), f"paged_write {isa}")


def test_paged_attention_inputs_as_views(isas) -> None:
    """q, k, v as transposed views of (B, L, H, D) projections: read as the arrays they stand for."""
    batch = Batch([9, 40], 4, 16, 4, 2, 32, seed=8)
    want, _ = kernels.paged_attention(
        batch.q, batch.k, batch.v, *batch.pools(0.0), batch.tables, batch.lengths_mx, backend="ref"
    )
    views = [mx.array(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) for a in (batch.q, batch.k, batch.v)]
    for isa in isas():
        kp, vp = batch.pools(math.nan)
        out, _ = kernels.paged_attention(*views, kp, vp, batch.tables, batch.lengths_mx, backend="cpu")
        assert_allclose(out, want, RTOL, ATOL, f"views {isa}")


def test_paged_decode_matches_decode_attention_rows(isas) -> None:
    """The same decode step two independent ways on the cpu kernels: paged (keys in blocks of 16 through
    tables, the new token stored by the attention) and decode_attention_rows (each row's keys in its own
    contiguous buffer)."""
    before = [0, 15, 16, 700, 2047]  # tokens each row holds before the step
    H, H_kv, D = 14, 2, 64
    batch = Batch([n + 1 for n in before], 1, 16, H, H_kv, D, seed=11)
    rows = []
    for b, n in enumerate(before):
        kc = np.zeros((1, H_kv, n + 9, D), np.float32)
        vc = np.zeros((1, H_kv, n + 9, D), np.float32)
        kc[0, :, :n], vc[0, :, :n] = batch.keys[b, :, :n], batch.values[b, :, :n]
        rows.append((mx.array(kc), mx.array(vc)))
    for isa in isas():
        dense, _ = kernels.decode_attention_rows(batch.q, batch.k, batch.v, rows, before, scale=0.125, backend="cpu")
        kp, vp = batch.pools(math.nan)
        paged, _ = kernels.paged_attention(
            batch.q, batch.k, batch.v, kp, vp, batch.tables, batch.lengths_mx, scale=0.125, backend="cpu"
        )
        assert_allclose(paged, dense, RTOL, ATOL, f"paged vs decode_attention_rows {isa}")


def _session(backend: str, lazy: bool, seed: int = 5):
    """A short serving session on one layer's pools (block size 16, 4 query heads, 2 kv heads, D 32):
    row 0 prefills 20 tokens in chunks of 12 and 8, row 1 forks from it (its partly filled second block
    copied: copy-on-write, the first block shared), then three decode steps of both rows (the last one
    written by paged_write and read with k=None). lazy: every step is built on the previous one's output
    (`after`) and the whole session evaluated once at the end; else each step is evaluated at once.
    Returns the outputs and the pools' contents."""
    rng = np.random.default_rng(seed)
    H, H_kv, D, bs = 4, 2, 32, 16

    def rand(*shape):
        return mx.array(rng.standard_normal(shape).astype(np.float32))

    kp, vp = kernels.kv_pool(6, bs, H_kv, D, backend=backend), kernels.kv_pool(6, bs, H_kv, D, backend=backend)
    outs, last = [], []

    def step(result):
        nonlocal kp, vp, last
        out, (kp, vp) = result
        outs.append(out)
        if lazy:
            last = [out]
        else:
            mx.eval(out, kp, vp)

    table0 = mx.array([[4, 1, -1]], dtype=mx.int32)
    for n, L in ((12, 12), (20, 8)):
        lengths = mx.array([n], dtype=mx.int32)
        q, k, v = rand(1, H, L, D), rand(1, H_kv, L, D), rand(1, H_kv, L, D)
        step(kernels.paged_attention(q, k, v, kp, vp, table0, lengths, backend=backend, after=last))
    step(kernels.paged_copy_blocks(kp, vp, [1], [3], backend=backend, after=last))
    tables = mx.array([[4, 1, -1], [4, 3, -1]], dtype=mx.int32)
    for n in (21, 22):
        lengths = mx.array([n, n], dtype=mx.int32)
        q, k, v = rand(2, H, 1, D), rand(2, H_kv, 1, D), rand(2, H_kv, 1, D)
        step(kernels.paged_attention(q, k, v, kp, vp, tables, lengths, backend=backend, after=last))
    lengths = mx.array([23, 23], dtype=mx.int32)
    q, k, v = rand(2, H, 1, D), rand(2, H_kv, 1, D), rand(2, H_kv, 1, D)
    step(kernels.paged_write(k, v, kp, vp, tables, lengths, backend=backend, after=last))
    step(kernels.paged_attention(q, None, None, kp, vp, tables, lengths, backend=backend, after=last))
    if lazy:
        kp, vp = mx.depends([kp, vp], last)
        mx.eval(*outs, kp, vp)
    # Block 4 is full; blocks 1 and 3 hold 7 tokens each (the rest of them is free space, garbage on cpu:
    # the copy took block 1 whole); blocks 0, 2 and 5 are never written.
    kp, vp = np.array(kp), np.array(vp)
    return [np.array(o) for o in outs], (kp[4], kp[[1, 3], :7]), (vp[4], vp[[1, 3], :7])


def test_lazy_chain_of_in_place_steps_equals_eager_steps(isas) -> None:
    """The cpu session evaluated step by step matches ref's; built lazily and evaluated once it gives
    exactly what the step-by-step run gives (outputs and pools)."""

    def flat(session):
        outs, keys, values = session
        return [*outs, *keys, *values]

    want = flat(_session("ref", lazy=False))
    for isa in isas():
        eager = flat(_session("cpu", lazy=False))
        lazy = flat(_session("cpu", lazy=True))
        for i, (e, w, z) in enumerate(zip(eager, want, lazy, strict=True)):
            assert_allclose(e, w, RTOL, ATOL, f"{isa} eager, array {i}")
            assert_allclose(z, e, 0, 0, f"{isa} lazy vs eager, array {i}")


def test_paged_copy_blocks_copies_exactly() -> None:
    require("cpu")
    rng = np.random.default_rng(0)
    shape = (9, 16, 2, 24)
    k0, v0 = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    src, dst = [7, 0, 3], [2, 8, 5]
    want_k, want_v = k0.copy(), v0.copy()
    want_k[dst], want_v[dst] = k0[src], v0[src]
    _, (rk, rv) = kernels.paged_copy_blocks(mx.array(k0), mx.array(v0), src, dst, backend="ref")
    assert_allclose(rk, want_k, 0, 0, "ref keys")
    assert_allclose(rv, want_v, 0, 0, "ref values")
    kp, vp = mx.array(k0), mx.array(v0)
    done, pools = kernels.paged_copy_blocks(kp, vp, src, dst, backend="cpu")
    assert pools[0] is kp and pools[1] is vp and done.shape == (0,)
    kp, vp = mx.depends([kp, vp], [done])
    assert_allclose(kp, want_k, 0, 0, "cpu keys")
    assert_allclose(vp, want_v, 0, 0, "cpu values")
    done, _ = kernels.paged_copy_blocks(kp, vp, [], [], backend="cpu")  # nothing to copy
    assert_allclose(mx.depends([kp], [done])[0], want_k, 0, 0, "an empty copy")


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_kv_pool_takes_memory_only_as_blocks_are_written() -> None:
    """A 512 MiB pool, evaluated, costs (almost) no resident memory; blocks written into it far apart read
    back exactly, and cost about what they hold."""
    require("cpu")
    try:
        _rss()
    except (OSError, RuntimeError):
        pytest.skip("needs /proc/self/status (Linux)")
    num_blocks, bs, H_kv, D = 8192, 16, 2, 512
    before = _rss()
    kp = kernels.kv_pool(num_blocks, bs, H_kv, D, backend="cpu")
    vp = kernels.kv_pool(num_blocks, bs, H_kv, D, backend="cpu")
    mx.eval(kp, vp)
    assert kp.shape == (num_blocks, bs, H_kv, D) and kp.dtype == mx.float32
    assert kp.nbytes == 512 * 2**20
    grown = _rss() - before
    assert grown < 32 * 2**20, f"two 512 MiB pools took {grown / 2**20:.1f} MiB resident at creation"

    rng = np.random.default_rng(1)
    blocks = [8191, 5, 4000]  # one row's table: out of order, far apart
    n = 3 * bs - 3
    k = mx.array(rng.standard_normal((1, H_kv, n, D)).astype(np.float32))
    v = mx.array(rng.standard_normal((1, H_kv, n, D)).astype(np.float32))
    tables, lengths = mx.array([blocks], dtype=mx.int32), mx.array([n], dtype=mx.int32)
    done, _ = kernels.paged_write(k, v, kp, vp, tables, lengths, backend="cpu")
    kp, vp = mx.depends([kp, vp], [done])
    idx = mx.array(blocks)
    got_k = kp[idx].reshape(3 * bs, H_kv, D)[:n].transpose(1, 0, 2)  # (H_kv, n, D)
    got_v = vp[idx].reshape(3 * bs, H_kv, D)[:n].transpose(1, 0, 2)
    assert_allclose(got_k, k[0], 0, 0, "keys read back")
    assert_allclose(got_v, v[0], 0, 0, "values read back")
    q = mx.array(rng.standard_normal((1, 4, 1, D)).astype(np.float32))
    out, _ = kernels.paged_attention(q, None, None, kp, vp, tables, lengths, backend="cpu")
    assert_allclose(out, ref.flash_attention(q, k, v, D**-0.5), RTOL, ATOL, "attention over the written blocks")
    grown = _rss() - before
    assert grown < 64 * 2**20, f"{grown / 2**20:.1f} MiB resident after writing 3 blocks of 64 KiB"
    del kp, vp, done
    mx.clear_cache()


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_paged_ops_reject_bad_input(backend) -> None:
    require(backend)
    batch = Batch([5, 20], 1, 16, 4, 2, 16, seed=2)
    kp, vp = batch.pools(0.0)
    q, k, v, tables = batch.q, batch.k, batch.v, batch.tables

    def attend(**kw):
        a = {"q": q, "k": k, "v": v, "k_pool": kp, "v_pool": vp, "block_tables": tables}
        a["lengths"] = batch.lengths_mx
        a.update(kw)
        return kernels.paged_attention(**a, backend=backend)

    with pytest.raises(ValueError, match="outside the pool"):
        attend(block_tables=mx.array([[0, -1, -1], [1, 99, -1]], dtype=mx.int32))
    with pytest.raises(ValueError, match="not covered"):
        attend(lengths=mx.array([5, 100], dtype=mx.int32))
    with pytest.raises(ValueError, match="names a block twice"):
        attend(block_tables=mx.array([[0, -1, -1], [1, 1, -1]], dtype=mx.int32))
    with pytest.raises(ValueError, match="at least L"):
        kernels.paged_attention(
            mx.concatenate([q, q], axis=2),
            None,
            None,
            kp,
            vp,
            tables,
            mx.array([1, 20], dtype=mx.int32),
            backend=backend,
        )
    with pytest.raises(ValueError, match="both k and v"):
        attend(v=None)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        attend(q=q[:, :3], k=None, v=None)
    with pytest.raises(ValueError, match="int32"):
        attend(lengths=mx.array([5, 20], dtype=mx.int64))
    with pytest.raises(ValueError, match="float32"):
        attend(k_pool=kp.astype(mx.float16))
    with pytest.raises(ValueError, match="like the pool"):
        kernels.paged_write(k[:, :1], v[:, :1], kp, vp, tables, batch.lengths_mx, backend=backend)
    with pytest.raises(ValueError, match="never a source"):
        kernels.paged_copy_blocks(kp, vp, [1, 2], [2, 3], backend=backend)
    with pytest.raises(ValueError, match="outside the pool"):
        kernels.paged_copy_blocks(kp, vp, [1], [batch.num_blocks], backend=backend)
    with pytest.raises(ValueError, match="block_size"):
        kernels.kv_pool(4, 0, 2, 16, backend=backend)


def test_extension_checks_its_own_inputs() -> None:
    """The extension called directly: shapes raise ValueError when the op is built; a table whose values
    are still lazy then is checked by the kernel before it writes anything (RuntimeError at eval)."""
    require("cpu")
    ext = kcpu.load()
    batch = Batch([5, 20], 1, 16, 4, 2, 16, seed=2)
    kp, vp = batch.pools(math.nan)
    q, k, v, tables, lengths = batch.q, batch.k, batch.v, batch.tables, batch.lengths_mx
    with pytest.raises(ValueError, match="outside the pool"):
        ext.paged_write(k, v, kp, vp, mx.array([[0, -1, -1], [1, 99, -1]], dtype=mx.int32), lengths)
    with pytest.raises(ValueError, match="two pools"):
        ext.paged_write(k, v, kp, kp, tables, lengths)
    kt, vt = kp.transpose(1, 0, 2, 3), vp.transpose(1, 0, 2, 3)
    mx.eval(kt, vt)
    with pytest.raises(ValueError, match="row-contiguous"):
        ext.paged_attention(q, None, None, kt, vt, tables, lengths, 0.1)
    with pytest.raises(ValueError, match="int32"):
        ext.paged_attention(q, k, v, kp, vp, tables.astype(mx.int64), lengths, 0.1)
    with pytest.raises(ValueError, match="both k and v"):
        ext.paged_attention(q, k, None, kp, vp, tables, lengths, 0.1)
    with pytest.raises(ValueError, match="never a source"):
        ext.paged_copy_blocks(kp, vp, [0, 1], [1, 2])
    with pytest.raises(ValueError, match=">= 1"):
        ext.kv_pool(0, 16, 2, 16)
    k_before, v_before = np.array(kp), np.array(vp)
    lazy = tables + mx.array(batch.num_blocks, dtype=mx.int32)  # live entries outside the pool, not yet evaluated
    out = ext.paged_attention(q, k, v, kp, vp, lazy, lengths, 0.1)
    with pytest.raises(RuntimeError, match="outside the pool"):
        mx.eval(out)
    assert np.array_equal(np.array(kp), k_before, equal_nan=True), "a rejected step wrote into the pools"
    assert np.array_equal(np.array(vp), v_before, equal_nan=True), "a rejected step wrote into the pools"
    out = ext.paged_attention(q, k, v, kp, vp, tables, lengths, 0.1)  # the stream runs on
    assert mx.all(mx.isfinite(out)).item()
