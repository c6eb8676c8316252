"""Test helpers: one assert_allclose that prints the worst elements, per-dtype tolerances, tiny models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

# (rtol, atol) per dtype of the computation under test.
TOLERANCES = {
    mx.float32: (1e-5, 1e-5),
    mx.float16: (1e-3, 1e-3),
    mx.bfloat16: (1e-2, 1e-2),
}


def tolerance(dtype) -> tuple[float, float]:
    return TOLERANCES[dtype]


def assert_allclose(actual, expected, rtol: float, atol: float, what: str = "") -> None:
    """np.testing-style check whose failure message lists the 5 worst elements with their indices."""
    a = np.asarray(actual.astype(mx.float32) if isinstance(actual, mx.array) else actual, dtype=np.float64)
    e = np.asarray(expected.astype(mx.float32) if isinstance(expected, mx.array) else expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    bad = err > bound
    if bad.any() or not np.isfinite(a).all():
        order = np.argsort(-(err - bound).ravel())[:5]
        rows = [
            f"  at {np.unravel_index(i, a.shape)}: got {a.ravel()[i]:.7g}, expected {e.ravel()[i]:.7g}"
            f" (|diff| {err.ravel()[i]:.3g} > {bound.ravel()[i]:.3g})"
            for i in order
        ]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} elements out of tolerance (rtol={rtol}, atol={atol});"
            f" max |diff| {err.max():.3g}\n" + "\n".join(rows)
        )


def assert_close(actual: mx.array, expected: mx.array, K: int, rtol: float = 1e-4) -> None:
    """A kernel's output against its reference: same shape and dtype, and |a - e| <= atol + rtol*|e| with
    atol = rtol*sqrt(K), the size of a sum of K unit-variance products (inputs are unit-variance)."""
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert_allclose(actual, expected, rtol, rtol * max(1.0, float(np.sqrt(K))), f"K={K}")


def require(backend: str) -> None:
    """Skip the test, with the reason, unless kernel backend `backend` runs here (never faked)."""
    from tiny_llm_playground import kernels

    status = kernels.available_backends()[backend]
    if status != "ok":
        import pytest

        pytest.skip(f"backend {backend!r} {status}")


def block_weights(block) -> dict[str, object]:
    """A transformer block's linear weights by their Hugging Face names ("self_attn.q_proj.weight", ...), as
    the block holds them; the block must keep them unstacked (the "ref" backend, or float weights)."""
    attn, mlp = block.self_attn, block.mlp
    stacked = [lin for lin, splits in (*attn.qkv.parts, *mlp.gate_up.parts) if splits]
    assert not stacked, "this block stacks its projections; load it with backend='ref' to see them one by one"
    q, k, v = (lin.weight for lin, _ in attn.qkv.parts)
    gate, up = (lin.weight for lin, _ in mlp.gate_up.parts)
    return {
        "self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v,
        "self_attn.o_proj.weight": attn.o_proj.weight, "mlp.gate_proj.weight": gate, "mlp.up_proj.weight": up,
        "mlp.down_proj.weight": mlp.down_proj.weight,
    }  # fmt: skip


def model_matmul_weights(model) -> list:
    """Every weight the model multiplies by, as held (stacked ones once): the layers' and the head's."""
    out = [model.lm_head.weight]
    for block in model.layers:
        attn, mlp = block.self_attn, block.mlp
        out += [lin.weight for lin, _ in (*attn.qkv.parts, *mlp.gate_up.parts)]
        out += [attn.o_proj.weight, mlp.down_proj.weight]
    return out


@dataclass(frozen=True)
class Reference:
    token_ids: tuple[int, ...]
    reason: str
    text: str


def reference_generate(model, tokenizer, prompt_ids: list[int], params) -> Reference:
    """One prompt's generation written out independently of the engine's serving code (no Sequence,
    scheduler, runner or cache views): the model with its own fresh cache, one forward per token, the
    request's sampler, EOS (unless ignore_eos) and the length limit; no stop strings. The reference the
    batching tests hold the engine to."""
    from tiny_llm_playground.engine.sampling import Sampler

    cache, sampler, out = model.make_cache(), Sampler(params), []
    max_new = min(params.max_tokens, model.args.max_position_embeddings - len(prompt_ids))
    eos = frozenset() if params.ignore_eos else frozenset(tokenizer.eos_token_ids)
    logits = model(mx.array([prompt_ids]), cache, last_only=True)[0, -1]
    reason = "length"
    while len(out) < max_new:
        token = sampler(np.array(logits, dtype=np.float32), [*prompt_ids, *out]).token
        if token in eos:
            reason = "eos"
            break
        out.append(token)
        logits = model(mx.array([[token]]), cache, last_only=True)[0, -1]
    return Reference(tuple(out), reason, tokenizer.decode(out))


def assert_writes_a_correct_prime_function(text: str) -> None:
    """The reply holds a ```python block defining a function named like "prime" that agrees with a sieve
    on 0..499 (the model's own code is executed)."""
    import re

    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code, f"no complete code block in:\n{text}"
    namespace: dict = {}
    exec(code.group(1), namespace)  # the model's own code
    fn = next(v for k, v in namespace.items() if callable(v) and "prime" in k)
    sieve = [n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(500)]
    assert [bool(fn(n)) for n in range(500)] == sieve


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(P || Q) between the softmax distributions of two logit vectors, in nats."""
    lp = p_logits.astype(np.float64) - np.logaddexp.reduce(p_logits.astype(np.float64))
    lq = q_logits.astype(np.float64) - np.logaddexp.reduce(q_logits.astype(np.float64))
    return float(np.sum(np.exp(lp) * (lp - lq)))


TINY_CONFIG = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


def tiny_weights(config: dict, seed: int = 0) -> dict[str, mx.array]:
    """Random HF-named float32 weights for a tiny Qwen2 (norm weights near 1, biases non-zero)."""
    key = mx.random.key(seed)
    D, F, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    H, Hkv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = D // H
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, D)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (D,),
            p + "post_attention_layernorm.weight": (D,),
            p + "self_attn.q_proj.weight": (H * hd, D),
            p + "self_attn.q_proj.bias": (H * hd,),
            p + "self_attn.k_proj.weight": (Hkv * hd, D),
            p + "self_attn.k_proj.bias": (Hkv * hd,),
            p + "self_attn.v_proj.weight": (Hkv * hd, D),
            p + "self_attn.v_proj.bias": (Hkv * hd,),
            p + "self_attn.o_proj.weight": (D, H * hd),
            p + "mlp.gate_proj.weight": (F, D),
            p + "mlp.up_proj.weight": (F, D),
            p + "mlp.down_proj.weight": (D, F),
        }
    out = {}
    for name, shape in sorted(shapes.items()):
        key, sub = mx.random.split(key)
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * mx.random.normal(shape, key=sub)
        else:
            scale = 0.5 if name.endswith("bias") or "embed" in name else shape[-1] ** -0.5
            out[name] = scale * mx.random.normal(shape, key=sub)
    mx.eval(out)
    return out


# A tiny model whose GGUF carries a byte-level vocabulary (256 bytes + 2 merges + 3 specials + padding).
TINY_GGUF_CONFIG = TINY_CONFIG | {"tie_word_embeddings": False, "vocab_size": 288}


_Q5_TENSORS = ("attn_q.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight")


def write_tiny_gguf(path: Path, config: dict, weights: dict[str, np.ndarray]) -> None:
    """A tiny qwen2 GGUF and a byte-level vocab: 2-D weights with K % 32 == 0 in Q5_0 (q, o, gate, up)
    or Q8_0 (the others), the rest F32."""
    import gguf

    from tiny_llm_playground.engine.loader.convert import _GLOBAL_MAP, _LAYER_MAP
    from tiny_llm_playground.engine.text import bytes_to_unicode

    inv = {v: k for k, v in _GLOBAL_MAP.items()}
    inv_layer = {v: k for k, v in _LAYER_MAP.items()}
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    byte_tokens = list(bytes_to_unicode().values())  # 256 byte-level symbols
    tokens = byte_tokens + ["Ġt", "Ġth"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += [f"[PAD{i}]" for i in range(config["vocab_size"] - len(tokens) - len(specials))] + specials
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 3) + [3, 3, 3])
    w.add_token_merges(["Ġ t", "Ġt h"])
    w.add_eos_token_id(len(tokens) - 1)
    w.add_bos_token_id(len(tokens) - 3)
    w.add_pad_token_id(len(tokens) - 3)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    for name, arr in weights.items():
        if name in inv:
            gname = inv[name]
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{i}.{inv_layer[rest]}"
        if arr.ndim == 2 and arr.shape[1] % 32 == 0:
            # Q5_0 for the attention and gate/up matrices, Q8_0 for the rest (as the Qwen2.5 GGUFs mix them)
            kind = gguf.GGMLQuantizationType.Q5_0 if gname.endswith(_Q5_TENSORS) else gguf.GGMLQuantizationType.Q8_0
            q = gguf.quants.quantize(arr, kind)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=kind)
        else:
            w.add_tensor(gname, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run_coroutine(coro):
    """asyncio.run in a fresh thread: works even when this thread already runs an event loop (the
    session-scoped Playwright sync API keeps one running in the main thread during browser tests)."""
    import asyncio
    import threading

    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
