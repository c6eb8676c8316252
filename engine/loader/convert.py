"""Convert a GGUF file into the engine's folder format (HF-style names, float32 safetensors).

GGUF tensors are dequantized with the `gguf` package (exact float32 values of the quantized weights), and
renamed to the Hugging Face Qwen2 names so the same folder also loads in mlx-lm or transformers. The
tokenizer is rebuilt from the GGUF vocabulary and merges. Everything is written into a temporary folder
that is renamed into place, and the COMPLETE marker is written last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tiny_llm_playground.engine.loader.manifest import COMPLETE_MARKER

# GGUF tensor name -> HF name ({i} = layer index).
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(gguf_name: str) -> str:
    """Map a GGUF tensor name to its Hugging Face Qwen2 name; raises ValueError for unknown names."""
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m and m.group(2) in _LAYER_MAP:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r} for a qwen2 model")


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def config_from_gguf(reader) -> dict:
    """HF Qwen2 config.json fields read from the GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "qwen2":
        raise ValueError(f"unsupported GGUF architecture {arch!r} (this engine implements qwen2)")
    names = {t.name for t in reader.tensors}
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    hidden = int(_field(reader, "qwen2.embedding_length"))
    heads = int(_field(reader, "qwen2.attention.head_count"))
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "qwen2.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "qwen2.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "qwen2.attention.head_count_kv", heads)),
        "head_dim": hidden // heads,
        "rms_norm_eps": float(_field(reader, "qwen2.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "qwen2.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(reader, "qwen2.context_length")),
        "vocab_size": n_vocab,
        # The GGUF may carry a separately quantized output matrix; then the head is not tied.
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }


def dequantized_tensors(reader, *, quiet: bool = True):
    """Yield (hf_name, float32 ndarray in HF layout) for every tensor of the GGUF."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    for t in tqdm(reader.tensors, desc="dequantize", unit="tensor", disable=quiet):
        if t.tensor_type == GGMLQuantizationType.F32:
            arr = np.asarray(t.data, dtype=np.float32)
        else:
            arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # gguf lists dims fastest-first; numpy wants them slowest-first (= HF's (out, in) layout).
        shape = tuple(int(d) for d in reversed(t.shape))
        yield hf_name(t.name), arr.reshape(shape)


def convert_gguf(gguf_file: Path, out_dir: Path, *, sha256: str | None = None, quiet: bool = False) -> Path:
    """Convert `gguf_file` into `out_dir` (config, float32 safetensors, tokenizer); return out_dir."""
    import gguf
    from safetensors.numpy import save_file

    from tiny_llm_playground.engine.loader.gguf_tokenizer import tokenizer_files_from_gguf

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        reader = gguf.GGUFReader(str(gguf_file))
        config = config_from_gguf(reader)
        weights = dict(dequantized_tensors(reader, quiet=quiet))
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "np"})
        del weights
        for fname, text in tokenizer_files_from_gguf(reader).items():
            (tmp / fname).write_text(text, encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / "source.json").write_text(
            json.dumps({"gguf": str(gguf_file), "sha256": sha256}, indent=2), encoding="utf-8"
        )
        (tmp / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
        shutil.rmtree(out_dir, ignore_errors=True)  # an incomplete earlier attempt
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
