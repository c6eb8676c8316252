"""Streaming detokenization: token ids in, text deltas out, always whole characters.

Rules it keeps: never emits part of a multi-byte UTF-8 character (a byte-level token can end in the middle
of an emoji or CJK character, which decodes to a trailing U+FFFD until the rest arrives), and the deltas
plus `finalize()` add up to `decode(all ids)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class TextDecoder(Protocol):
    """Anything that turns ids into text the way `Tokenizer.decode` does."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class StreamingDetokenizer:
    """Turns a stream of token ids into text deltas that are always whole characters.

    Keeps a small window: the tokens of the last emitted chunk (context, so decoders whose output depends on
    the previous token stay right) plus the tokens not emitted yet. Each `add` decodes only that window, and
    holds everything back while its text ends in U+FFFD (an incomplete UTF-8 sequence). Because each chunk
    ends on a whole character, the concatenated deltas plus `finalize()` equal `decode(all ids)`.
    """

    def __init__(self, tokenizer: TextDecoder, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._reset()

    def _reset(self) -> None:
        self._window: list[int] = []
        self._read = 0  # window[:_read] is already emitted context
        self._prefix_text = ""  # decode(window[:_read])

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        """Feed one token; return the text it completes (possibly '')."""
        self._window.append(int(token_id))
        text = self._decode(self._window)
        if text.endswith(REPLACEMENT_CHAR) or len(text) <= len(self._prefix_text):
            return ""
        delta = text[len(self._prefix_text) :]
        # The unread tokens just emitted become the next window's context.
        self._window = self._window[self._read :]
        self._prefix_text = self._decode(self._window)
        self._read = len(self._window)
        return delta

    def finalize(self) -> str:
        """Flush held-back text (an unfinished character comes out as U+FFFD) and start over."""
        rest = self._decode(self._window)[len(self._prefix_text) :] if self._read < len(self._window) else ""
        self._reset()
        return rest

    @property
    def has_pending(self) -> bool:
        """True while some fed tokens have not produced text yet."""
        return self._read < len(self._window)
