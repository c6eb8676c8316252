"""Test fakes for engine logic without weights: a scripted model and a byte-level tokenizer.

`ScriptedModel` implements what the engine needs of a model (engine.models.CausalLM): ids (B, L) and
per-layer caches in, logits out. Its logits follow a script, `script(context) -> next token id` (or a
whole (V,) logits vector), where `context` is every token of that row so far. It keeps each row's tokens
in the real KV cache it is given (a token id is stored as a one-number key, through the cache's
`update_and_fetch`), and checks the positions the cache reports (`offset`, what a real model's RoPE reads)
against what its rows hold, so a test sees the engine's own cache views, lengths and padding at work: a
wrong length or a row mixed up with another changes the context the script sees, and so the tokens. (Real
tensors and the fused `attend` path are the tiny random model's tests: tests/engine/serve/test_batching.py.) Speculative decoding and scheduler tests script target and
draft models this way.

`ByteTokenizer`: ids 0..255 are bytes, 256 is EOS; text is UTF-8 (what engine.text's detokenizer and stop
strings need from a tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from tiny_llm_playground.engine.cache import DenseKVCache, make_cache

Script = Callable[[tuple[int, ...]], "int | np.ndarray"]


@dataclass
class ScriptedArgs:
    vocab_size: int
    max_position_embeddings: int
    num_hidden_layers: int = 1
    num_key_value_heads: int = 1  # one number per token: its id (see _rows)
    head_dim: int = 1


class ScriptedModel:
    """A weightless model whose next-token logits are `script(context)`: an int puts all the probability
    on that token (logit `margin`, the rest 0), an array is used as the logits as they are."""

    def __init__(self, script: Script, vocab_size: int = 260, context: int = 512, margin: float = 30.0) -> None:
        self.script = script
        self.args = ScriptedArgs(vocab_size, context)
        self.margin = margin
        self.calls: list[tuple[int, int]] = []  # (B, L) of every forward, in order

    def make_cache(self) -> list[DenseKVCache]:
        return make_cache(self.args.num_hidden_layers)

    def _logits(self, context: tuple[int, ...]) -> np.ndarray:
        out = self.script(context)
        if isinstance(out, np.ndarray):
            if out.shape != (self.args.vocab_size,):
                raise ValueError(f"the script returned logits of shape {out.shape}, want ({self.args.vocab_size},)")
            return out.astype(np.float32)
        logits = np.zeros(self.args.vocab_size, dtype=np.float32)
        logits[int(out)] = self.margin
        return logits

    def _rows(self, ids: mx.array, cache: list | None) -> list[list[int]]:
        """Every row's tokens so far, the new ones included (stored in the cache when there is one)."""
        B, L = ids.shape
        if cache is None:
            return [ids[b].tolist() for b in range(B)]
        c = cache[0]
        before = c.offset  # what a real model's RoPE would read: each row's tokens so far
        positions = [before] * B if isinstance(before, int) else before.tolist()
        if c.lengths and positions != c.lengths:  # DenseKVCache and PagedKVCache both count per row
            raise AssertionError(f"the cache's offset {positions} is not what its rows hold {c.lengths}")
        as_keys = ids.astype(mx.float32).reshape(B, 1, L, 1)  # one number per token: its id
        keys, _ = c.update_and_fetch(as_keys, as_keys)  # (B, 1, S, 1), rows right-padded
        lengths = c.lengths  # each row's tokens, now the new ones included
        return [[int(t) for t in keys[b, 0, : lengths[b], 0].tolist()] for b in range(B)]

    def hidden_states(self, ids: mx.array, cache: list | None = None) -> mx.array:
        """(B, L) -> (B, L, V): the "hidden state" of a position is its logits (so `logits` is the identity)."""
        B, L = ids.shape
        self.calls.append((B, L))
        rows = self._rows(ids, cache)
        out = [[self._logits(tuple(row[: len(row) - L + i + 1])) for i in range(L)] for row in rows]
        return mx.array(np.array(out, dtype=np.float32))

    def logits(self, h: mx.array) -> mx.array:
        return h

    def __call__(self, ids: mx.array, cache: list | None = None, *, last_only: bool = False) -> mx.array:
        h = self.hidden_states(ids, cache)
        return h[:, -1:, :] if last_only else h


def spell(text: str, eos: int = 256) -> Script:
    """A script that answers a `prompt(...)` with `text`, byte by byte, then EOS. The prompt's first token is
    the prompt's length, so the script knows where the reply starts in any context it is given."""
    data = text.encode()

    def script(context: tuple[int, ...]) -> int:
        written = len(context) - context[0]  # context[0] = the prompt's length (see `prompt`)
        return data[written] if 0 <= written < len(data) else eos

    return script


def prompt(text: str) -> list[int]:
    """A prompt for `spell` scripts: its length as the first token, then the text's bytes."""
    data = list(text.encode())
    return [len(data) + 1, *data]


class ByteTokenizer:
    """Bytes as tokens (ids 0..255), 256 as EOS; decode is UTF-8 with U+FFFD for incomplete characters."""

    eos_token_ids = frozenset({256})

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
