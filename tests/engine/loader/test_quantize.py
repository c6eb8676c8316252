"""Quantized loading on a tiny converted model: which weights get quantized, the stored copy, fidelity."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from tests.utils import block_weights, kl_divergence
from tiny_llm_playground import kernels
from tiny_llm_playground.engine.loader import load_model
from tiny_llm_playground.engine.loader.quantize import cache_file
from tiny_llm_playground.kernels import QuantizedWeight

IDS = [[5, 77, 120, 3, 250, 9, 31]]


def logits(lm) -> np.ndarray:
    return np.array(lm.model(mx.array(IDS))[0, -1], dtype=np.float32)


def test_none_keeps_float32(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), quant="none")
    assert lm.quant == "none"
    assert not any(isinstance(v, QuantizedWeight) for v in block_weights(lm.model.layers[0]).values())


def test_q8_0_quantizes_every_linear_and_stays_close(tiny_model_dir):
    f32 = load_model(str(tiny_model_dir), quant="none")
    q8 = load_model(str(tiny_model_dir), quant="q8_0")
    # the loader's weights one by one (the fast path stacks q/k/v and gate/up into single matmuls)
    block = load_model(str(tiny_model_dir), quant="q8_0", backend="ref").model.layers[0]
    assert all(isinstance(v, QuantizedWeight) for v in block_weights(block).values())
    assert isinstance(q8.model.lm_head.weight, QuantizedWeight)
    assert not isinstance(q8.model.embed_tokens, QuantizedWeight)  # the gather table stays float32
    assert kl_divergence(logits(f32), logits(q8)) < 1e-3


def test_gguf_mode_takes_the_gguf_blocks_bit_for_bit(tiny_model_dir):
    """The default on a converted folder whose GGUF is still there: the GGUF's own Q5_0 / Q8_0 blocks."""
    import gguf

    from tiny_llm_playground.engine.loader.convert import hf_name
    from tiny_llm_playground.engine.loader.quantize import gguf_source

    lm = load_model(str(tiny_model_dir))  # quant="auto"
    assert lm.quant == "gguf"
    f32 = load_model(str(tiny_model_dir), quant="none")
    reader = gguf.GGUFReader(str(gguf_source(tiny_model_dir)))
    kinds = {hf_name(t.name): t.tensor_type.name for t in reader.tensors}
    # the loader's weights one by one: the readable path keeps them unstacked (the fast path stacks q/k/v
    # and gate/up into single matmuls, whose KL is checked below)
    layer = block_weights(load_model(str(tiny_model_dir), backend="ref").model.layers[0])
    f32ws = block_weights(f32.model.layers[0])
    seen = set()
    for k, qw in layer.items():
        if not isinstance(qw, QuantizedWeight):
            continue
        assert qw.format == kinds["model.layers.0." + k].lower(), k  # q5_0 / q8_0 as stored
        seen.add(qw.format)
        # exact: the float32 model is the dequantized GGUF
        np.testing.assert_array_equal(np.array(kernels.dequantize(qw)), np.array(f32ws[k]))
    assert seen == {"q5_0", "q8_0"}
    assert kl_divergence(logits(f32), logits(lm)) < 1e-3  # only the activations' int8 rounding


def test_gguf_mode_without_its_gguf_is_a_clear_error(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "source.json").unlink()
    assert load_model(str(copy)).quant == "q8_0"  # auto falls back
    with pytest.raises(ValueError, match="quant 'gguf' needs the GGUF"):
        load_model(str(copy), quant="gguf")


def test_affine4_keeps_weights_whose_k_is_not_a_multiple_of_64_in_float32(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), quant="affine4")
    block = block_weights(load_model(str(tiny_model_dir), quant="affine4", backend="ref").model.layers[0])
    assert isinstance(block["mlp.gate_proj.weight"], QuantizedWeight)  # K = hidden 64
    assert not isinstance(block["mlp.down_proj.weight"], QuantizedWeight)  # K = intermediate 96
    assert np.isfinite(logits(lm)).all()


@pytest.mark.parametrize("backend", ["ref", None])
def test_quantized_copy_is_stored_once_and_reused(tiny_model_dir, backend):
    """One on-disk copy per layout: the row layout for the ref backend, the 16-row panels where the cpu
    kernels read them (the default backend on such a CPU)."""
    from tiny_llm_playground.engine.loader.load import _layout

    layout = _layout(backend)
    load_model(str(tiny_model_dir), quant="q8_0", backend=backend)
    path = cache_file(tiny_model_dir, "q8_0", layout)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    lm = load_model(str(tiny_model_dir), quant="q8_0", backend=backend)
    a = logits(lm)
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    head = lm.model.lm_head.weight
    assert head.format == ("q8_0x16" if layout == "panels" else "q8_0")
    path.write_bytes(b"garbage")  # a broken copy is rebuilt, never trusted
    b = logits(load_model(str(tiny_model_dir), quant="q8_0", backend=backend))
    np.testing.assert_array_equal(a, b)
    assert path.stat().st_size > 100


def test_both_layouts_hold_the_same_blocks(tiny_model_dir):
    """The panel layout is the row layout's blocks reordered: unpacked, every array is the same."""
    from tiny_llm_playground import kernels
    from tiny_llm_playground.engine.loader.quantize import quantize_weights
    from tiny_llm_playground.engine.models.qwen2 import ModelArgs, sanitize

    if not kernels.panel_kernels():
        pytest.skip("this CPU's kernels read no panel formats")
    from tiny_llm_playground.engine.loader.load import load_weights

    args = ModelArgs.from_dict(__import__("json").loads((tiny_model_dir / "config.json").read_text()))
    rows = quantize_weights(sanitize(load_weights(tiny_model_dir), args), "q8_0", tied=args.tie_word_embeddings)
    panels = quantize_weights(
        sanitize(load_weights(tiny_model_dir), args), "q8_0", tied=args.tie_word_embeddings, layout="panels"
    )
    n_panel = 0
    for k, qw in rows.items():
        if isinstance(qw, QuantizedWeight):
            n_panel += panels[k].format == "q8_0x16"
            for a, b in zip(qw.arrays(), kernels.unpack(panels[k]).arrays(), strict=True):
                np.testing.assert_array_equal(np.array(a), np.array(b))
    assert n_panel > 0
    with pytest.raises(ValueError, match="unknown weight layout"):
        quantize_weights(rows, "q8_0", tied=True, layout="columns")


def test_stored_copies_do_not_leak_into_float_loads(tiny_model_dir):
    load_model(str(tiny_model_dir), quant="affine4")
    lm = load_model(str(tiny_model_dir), quant="none")
    assert not isinstance(lm.model.lm_head.weight, QuantizedWeight)


def test_unknown_quant_is_a_value_error(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        load_model(str(tiny_model_dir), quant="int3")
