"""Stop strings: cut a stream of text at the first stop string, never emitting text that could start one."""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Cuts a stream of text at the first stop string, never emitting text that could start one.

    `push(delta)` returns `(safe_text, stopped)`: `safe_text` can be shown now; once a stop string appears
    the text is truncated just before it and `stopped` stays True. Call `flush()` when generation ends for
    another reason (EOS, length) to get the held-back tail.

    The first stop string to *complete* wins: generation stops at once, it cannot wait to see whether a
    longer stop that started earlier would have completed. Among stops completed by the same delta, the
    earliest start wins.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            raise TypeError("stops must be a list of strings, not one string")
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop strings must be non-empty strings")
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the stream

    def _held_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buffer = self._held + text
        hits = [(i, -len(s), s) for s in self.stops if (i := buffer.find(s)) >= 0]
        if hits:
            index, _, stop = min(hits)  # earliest match; the longest stop wins a tie
            self.stopped, self.matched, self._held = True, stop, ""
            return buffer[:index], True
        hold = self._held_suffix_len(buffer)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """The held-back tail (text that began like a stop string but the stream ended)."""
        rest, self._held = ("" if self.stopped else self._held), ""
        return rest
