"""Tests for kernels.linear: every available backend against the readable reference (kernels/ref.py).

Rules they keep:
- A backend that can't run here is skipped with the reason from `available_backends()`, never faked.
- float32 tolerance scales with sqrt(K) (the size of a sum of K unit-variance products);
  failures print the worst elements.
- The cpu extension is checked on every instruction set this CPU can run (avx512 / avx2 / generic).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import mlx.core as mx
import pytest

from tests.utils import assert_close, require
from tiny_llm_playground import kernels
from tiny_llm_playground.kernels import cpu as kcpu
from tiny_llm_playground.kernels import ref, registry

FAST_BACKENDS = ["cpu", "metal", "cuda"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make(shape_x: tuple[int, ...], N: int, bias: bool, seed: int = 0) -> tuple[mx.array, mx.array, mx.array | None]:
    K = shape_x[-1]
    kx, kw, kb = mx.random.split(mx.random.key(seed), 3)
    x = mx.random.normal(shape_x, key=kx)  # (..., K)
    w = mx.random.normal((N, K), key=kw)  # (N, K)
    b = mx.random.normal((N,), key=kb) if bias else None  # (N,)
    return x, w, b


def check(backend: str, x: mx.array, w: mx.array, b: mx.array | None) -> None:
    got = kernels.linear(x, w, b, backend=backend)
    want = ref.linear(x, w, b)
    assert_close(got, want, K=w.shape[1])


# Odd and real sizes; the largest products are left out to keep the reference (slow on CPU) quick.
_MS = (1, 2, 3, 7, 64, 513)
_KS = (1, 3, 17, 896, 4864)
_NS = (1, 5, 127, 896)
SHAPES = [(M, K, N) for M in _MS for K in _KS for N in _NS if M * K * N <= 6_000_000]
SHAPES += [(513, 896, 896), (64, 4864, 896), (9, 896, 4864), (16, 896, 4864)]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("M,K,N", SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES])
def test_linear_matches_ref(backend: str, M: int, K: int, N: int) -> None:
    require(backend)
    x, w, b = make((M, K), N, bias=True, seed=M * 7 + K * 3 + N)
    check(backend, x, w, b)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("M,K,N", [(1, 896, 127), (7, 17, 5), (64, 896, 896), (513, 3, 127)])
def test_linear_without_bias(backend: str, M: int, K: int, N: int) -> None:
    require(backend)
    x, w, _ = make((M, K), N, bias=False)
    check(backend, x, w, None)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("lead", [(2, 5), (3, 1), (1, 40), (2, 3, 4)])
def test_linear_leading_batch_dims(backend: str, lead: tuple[int, ...]) -> None:
    require(backend)
    x, w, b = make((*lead, 96), 33, bias=True)
    y = kernels.linear(x, w, b, backend=backend)
    assert y.shape == (*lead, 33)
    check(backend, x, w, b)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_linear_1d_input_is_a_single_row(backend: str) -> None:
    require(backend)
    x, w, b = make((17,), 9, bias=True)
    assert kernels.linear(x, w, b, backend=backend).shape == (9,)
    check(backend, x, w, b)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_linear_empty_batch(backend: str) -> None:
    require(backend)
    x, w, b = make((0, 17), 9, bias=True)
    y = kernels.linear(x, w, b, backend=backend)
    mx.eval(y)
    assert y.shape == (0, 9)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_linear_noncontiguous_inputs(backend: str) -> None:
    require(backend)
    K, N = 40, 37
    base = mx.random.normal((K, 2 * 70), key=mx.random.key(1))
    x_t = base.T  # (140, K) transposed view
    x_sliced = mx.random.normal((3, 50, 2 * K), key=mx.random.key(2))[:, ::3, ::2]  # (3, 17, K) strided
    w_t = mx.random.normal((K, N), key=mx.random.key(3)).T  # (N, K) transposed view
    b_strided = mx.random.normal((2 * N,), key=mx.random.key(4))[::2]  # (N,) strided
    w = mx.random.normal((N, K), key=mx.random.key(5))
    for x, ww, b in [
        (x_t, w, None),
        (x_sliced, w, b_strided),
        (x_t[5:90:2], w_t, b_strided),
        (x_sliced, w_t, None),
    ]:
        check(backend, x, ww, b)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_linear_composes_in_a_lazy_graph(backend: str) -> None:
    require(backend)
    x, w, b = make((8, 64), 32, bias=True)
    w2 = mx.random.normal((16, 32), key=mx.random.key(9))
    y = kernels.linear(mx.tanh(kernels.linear(x, w, b, backend=backend)), w2, backend=backend) * 2.0
    want = ref.linear(mx.tanh(ref.linear(x, w, b)), w2) * 2.0
    assert_close(y, want, K=64)


def test_cpu_linear_on_every_isa() -> None:
    require("cpu")
    ext = kcpu.load()
    before = ext.cpu_isa()
    try:
        for isa in ext.supported_isas():
            ext.set_isa(isa)
            for M, K, N, bias in [
                (1, 33, 29, True),
                (3, 896, 127, False),
                (7, 17, 5, True),
                (16, 100, 50, True),
                (33, 896, 61, True),
                (64, 4864, 25, False),
                (513, 17, 127, True),
            ]:
                x, w, b = make((M, K), N, bias=bias, seed=M + K + N)
                check("cpu", x, w, b)
    finally:
        ext.set_isa(before)


def test_cpu_set_isa_rejects_unknown() -> None:
    require("cpu")
    with pytest.raises(ValueError):
        kcpu.load().set_isa("sse9000")


@pytest.mark.parametrize("threads", ["1", "3"])
def test_cpu_linear_with_thread_count_override(threads: str) -> None:
    require("cpu")
    code = (
        "import mlx.core as mx, numpy as np, kernels\n"
        "from kernels import cpu\n"
        f"assert cpu.load().num_threads() == {threads}, cpu.load().num_threads()\n"
        "x = mx.random.normal((70, 300)); w = mx.random.normal((500, 300)); b = mx.random.normal((500,))\n"
        "for xx in (x, x[:1], x[:5]):\n"
        "    got = np.array(kernels.linear(xx, w, b, backend='cpu'))\n"
        "    d = np.abs(got - np.array(kernels.linear(xx, w, b, backend='ref')))\n"
        "    assert d.max() < 1e-3, d.max()\n"
    )
    env = {**os.environ, "TINY_LLM_THREADS": threads}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_linear_rejects_bad_shapes(backend: str) -> None:
    if backend != "ref":
        require(backend)
    x, w, b = make((4, 8), 5, bias=True)
    cases = {
        "K mismatch": (x, mx.zeros((5, 7)), None),
        "w 1-D": (x, mx.zeros((8,)), None),
        "w 3-D": (x, mx.zeros((1, 5, 8)), None),
        "x 0-D": (mx.array(1.0), w, None),
        "bias wrong length": (x, w, mx.zeros((4,))),
        "bias 2-D": (x, w, mx.zeros((1, 5))),
        "integer x": (mx.zeros((4, 8), dtype=mx.int32), w, None),
    }
    for name, (xx, ww, bb) in cases.items():
        with pytest.raises(ValueError):
            kernels.linear(xx, ww, bb, backend=backend)
            pytest.fail(f"no ValueError for {name}")


def test_cpu_rejects_non_float32() -> None:
    require("cpu")
    x, w, b = make((4, 8), 5, bias=True)
    with pytest.raises(ValueError, match="float32"):
        kernels.linear(x.astype(mx.float16), w.astype(mx.float16), backend="cpu")
    with pytest.raises(ValueError, match="float32"):
        kernels.linear(x, w, b.astype(mx.bfloat16), backend="cpu")


def test_default_backend_sends_non_float32_to_ref() -> None:
    x, w, b = make((4, 8), 5, bias=True)
    y = kernels.linear(x.astype(mx.float16), w.astype(mx.float16), b.astype(mx.float16))
    assert y.dtype == mx.float16
    assert_close(y.astype(mx.float32), ref.linear(x, w, b), K=8, rtol=1e-2)


def test_unknown_backend_is_a_value_error() -> None:
    x, w, _ = make((2, 8), 5, bias=False)
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.linear(x, w, backend="tpu")


def test_unavailable_backend_raises_instead_of_running_another() -> None:
    x, w, _ = make((2, 8), 5, bias=False)
    for name, status in kernels.available_backends().items():
        if status != "ok":
            with pytest.raises(RuntimeError, match="unavailable"):
                kernels.linear(x, w, backend=name)


def test_available_backends_lists_every_backend() -> None:
    status = kernels.available_backends()
    assert set(status) == {"ref", "cpu", "metal", "cuda"}
    assert status["ref"] == "ok"
    for name, s in status.items():
        assert s == "ok" or s.startswith("unavailable: "), (name, s)


def test_available_backends_reports_cpu_ok_when_built() -> None:
    if not kcpu.built_files():
        pytest.skip("cpu extension not built (python -m kernels.build)")
    assert kernels.available_backends()["cpu"] == "ok", kernels.available_backends()["cpu"]
    assert kernels.backend_for("linear") == ("cpu" if mx.default_device() == mx.cpu else "ref")


def test_backend_for_rejects_unknown_op() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        kernels.backend_for("softmax9")


def test_missing_extension_falls_back_to_ref_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    if mx.default_device() != mx.cpu:
        pytest.skip("the fallback warning is about the CPU path")
    monkeypatch.setattr(kcpu, "_module", None)
    monkeypatch.setattr(kcpu, "_error", "extension not built (test)")
    monkeypatch.setattr(kcpu, "_tried", True)
    monkeypatch.setattr(registry, "_warned_fallback", False)
    monkeypatch.setattr(registry, "_chosen", {})  # the choices made while the extension loaded
    assert kernels.available_backends()["cpu"].startswith("unavailable: extension not built")
    assert kernels.backend_for("linear") == "ref"
    x, w, b = make((3, 8), 5, bias=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = kernels.linear(x, w, b)
        y2 = kernels.linear(x, w, b)
        kernels.rms_norm(x, mx.ones((8,)), 1e-6)  # another op falls back too, without a second warning
    fallback = [c for c in caught if "cpu backend is unavailable" in str(c.message)]
    assert len(fallback) == 1, [str(c.message) for c in caught]
    assert fallback[0].filename == __file__, "the warning names the line that called the kernel op"
    assert "kernels.build" in str(fallback[0].message)
    assert_close(y1, ref.linear(x, w, b), K=8)
    assert_close(y2, ref.linear(x, w, b), K=8)
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.linear(x, w, b, backend="cpu")
