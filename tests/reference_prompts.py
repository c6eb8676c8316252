"""The prompts the real-model tests compare against mlx-lm (live for short ones, saved for all).

`python -m tests.reference_prompts` recomputes tests/data/mlx_lm_reference.npz with mlx-lm's Qwen2 on the
converted 0.5B weights (float32). The saved file lets CI check the >500-token prompt against mlx-lm
without spending minutes in its reference-BLAS matmuls on every run (~250 s for 520 tokens here).
"""

from __future__ import annotations

from pathlib import Path

REFERENCE_FILE = Path(__file__).parent / "data" / "mlx_lm_reference.npz"


def _long_code() -> str:
    """A deterministic Python module of well over 500 tokens."""
    parts = ['"""Inventory management utilities."""\n\nfrom dataclasses import dataclass\n\n']
    for i, (item, price) in enumerate(
        [("widget", 2.5), ("gadget", 13.0), ("sprocket", 0.75), ("gizmo", 7.25), ("doohickey", 4.1)]
    ):  # fmt: skip
        parts.append(
            f'@dataclass\nclass {item.capitalize()}:\n    """A {item} with a price and a stock count."""\n'
            f"    name: str = {item!r}\n    price: float = {price}\n    stock: int = {10 * (i + 1)}\n\n"
            f"    def total_value(self) -> float:\n        return self.price * self.stock\n\n"
            f"    def restock(self, n: int) -> None:\n        if n < 0:\n"
            f"            raise ValueError('cannot restock a negative amount of {item}s')\n"
            f"        self.stock += n\n\n\n"
        )
    parts.append(
        'def cheapest(items):\n    """Return the item with the lowest price."""\n    return min(items, key=lambda'
    )
    return "".join(parts)


# name -> (text, chat?)
PROMPTS: dict[str, tuple[str, bool]] = {
    "capital": ("The capital of France is", False),
    "prime_chat": ("Write a Python function that checks whether a number is prime.", True),
    "code": ("def fibonacci(n):\n    ", False),
    "cjk_chat": ("用一句话解释什么是快速排序。", True),
    "long_code": (_long_code(), False),
}
LIVE = ("capital", "code", "cjk_chat")  # short enough to run mlx-lm in every test run


def prompt_ids(tokenizer, name: str) -> list[int]:
    text, chat = PROMPTS[name]
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}])
    return tokenizer.encode(text)


def mlx_lm_last_logits(model, ids: list[int]):
    """mlx-lm's last-position logits (computing the vocab projection for that position only)."""
    import mlx.core as mx
    import numpy as np

    h = model.model(mx.array([ids]))  # (1, L, D) after the final norm
    logits = model.lm_head(h[:, -1:, :])  # (1, 1, V)
    mx.eval(logits)
    return np.array(logits[0, 0], dtype=np.float32)


def main() -> None:
    import numpy as np
    from mlx_lm.utils import load_model as mlx_lm_load

    from tiny_llm_playground.engine.loader import fetch
    from tiny_llm_playground.engine.text import Tokenizer

    folder = fetch("qwen2.5-coder-0.5b")
    tok = Tokenizer.from_dir(folder)
    model, _ = mlx_lm_load(folder)
    arrays = {}
    for name in PROMPTS:
        ids = prompt_ids(tok, name)
        print(f"{name}: {len(ids)} tokens", flush=True)
        arrays[f"{name}__ids"] = np.array(ids, dtype=np.int32)
        arrays[f"{name}__logits"] = mlx_lm_last_logits(model, ids)
    REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE_FILE, **arrays)
    print(f"wrote {REFERENCE_FILE}")


if __name__ == "__main__":
    main()
