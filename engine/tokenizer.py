"""Text ⇄ token ids for the engine: the tokenizer wrapper, a streaming detokenizer and a stop-string matcher.

`Tokenizer` wraps `transformers.PreTrainedTokenizerFast` built from a folder holding `tokenizer.json` and
`tokenizer_config.json` (an HF/MLX model folder, or the pair `engine.loader.gguf_tokenizer` writes from a
GGUF). Nothing here touches the network.

Rules it keeps:
- `encode("")` is allowed and returns `[]`; rejecting empty prompts is the engine's job.
- `decode` never cleans up spaces: the text of a token sequence is exactly its bytes, so streamed deltas add
  up to the full decode.
- `StreamingDetokenizer` never emits part of a multi-byte UTF-8 character: a byte-level token can end in
  the middle of an emoji or CJK character, which decodes to a trailing U+FFFD until the rest arrives.
- `StopStringMatcher` never emits text that might turn out to be the start of a stop string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders
from transformers import PreTrainedTokenizerFast

if TYPE_CHECKING:
    import gguf

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
REPLACEMENT_CHAR = "\ufffd"

# Tokens that end a turn or a document in the Qwen family; any present in the vocabulary stops generation.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
# tokenizer_config.json keys passed through to PreTrainedTokenizerFast.
_CONFIG_KEYS = (
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "additional_special_tokens",
    "chat_template",
    "model_max_length",
    "split_special_tokens",
)
_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table, the alphabet byte-level BPE tokens are spelled in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_OF_CHAR: dict[str, int] = {c: b for b, c in bytes_to_unicode().items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _hf_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer_config.json entries PreTrainedTokenizerFast understands, as constructor kwargs."""
    kwargs = {k: config[k] for k in _CONFIG_KEYS if config.get(k) is not None}
    template = kwargs.get("chat_template")
    if isinstance(template, list):  # older HF configs store named templates: [{"name", "template"}]
        named = {t["name"]: t["template"] for t in template}
        kwargs["chat_template"] = named.get("default", next(iter(named.values()), None))
    # A token's text must be exactly its bytes, or streamed deltas stop adding up to the full decode.
    kwargs["clean_up_tokenization_spaces"] = False
    return kwargs


class Tokenizer:
    """A loaded tokenizer: encode/decode, chat templates, and token pieces for visualizations."""

    def __init__(self, hf: PreTrainedTokenizerFast, extra_eos_ids: Sequence[int] = ()) -> None:
        self.hf = hf
        self._backend: RawTokenizer = hf.backend_tokenizer
        self._vocab_size = len(hf)
        self._added: dict[int, str] = {i: t.content for i, t in hf.added_tokens_decoder.items()}
        self._special_ids = frozenset(hf.all_special_ids)
        self._byte_level = isinstance(self._backend.decoder, decoders.ByteLevel)
        eos = {int(i) for i in extra_eos_ids}
        if hf.eos_token_id is not None:
            eos.add(int(hf.eos_token_id))
        eos.update(i for t in _END_TOKENS if (i := self._backend.token_to_id(t)) is not None)
        self._eos_ids = frozenset(eos)

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load from a folder with `tokenizer.json` and `tokenizer_config.json`.

        Optional `chat_template.jinja` and `generation_config.json` (extra EOS ids) are read when present.
        Raises FileNotFoundError naming the first missing file.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{name} not found in {folder}")
        config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        kwargs = _hf_kwargs(config)
        # Newer HF folders keep the template in its own file.
        if "chat_template" not in kwargs and (folder / "chat_template.jinja").is_file():
            kwargs["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / TOKENIZER_FILE), **kwargs)
        # HF generation configs list every id that ends a reply (Qwen2.5: <|im_end|> and <|endoftext|>).
        extra: list[int] = []
        if (folder / "generation_config.json").is_file():
            gen_eos = _read_json(folder / "generation_config.json").get("eos_token_id")
            extra = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        return cls(hf, extra_eos_ids=extra)

    @classmethod
    def from_gguf(cls, source: str | Path | gguf.GGUFReader) -> Tokenizer:
        """Build straight from a GGUF file (or an open reader) without writing files."""
        import gguf

        from engine.loader.gguf_tokenizer import tokenizer_files_from_gguf

        reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(str(source))
        files = tokenizer_files_from_gguf(reader)
        raw = RawTokenizer.from_str(files[TOKENIZER_FILE])
        hf = PreTrainedTokenizerFast(tokenizer_object=raw, **_hf_kwargs(json.loads(files[TOKENIZER_CONFIG_FILE])))
        return cls(hf)

    # ---- basic properties ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (equals the model's embedding rows for GGUF files)."""
        return self._vocab_size

    @property
    def eos_token_ids(self) -> set[int]:
        """Ids that end generation: the configured EOS plus <|im_end|> / <|endoftext|> when present."""
        return set(self._eos_ids)

    @property
    def pad_token_id(self) -> int | None:
        return self.hf.pad_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry spelled as stored (e.g. '<|im_start|>'), or None."""
        return self._backend.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    # ---- encode / decode ----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. Special-token strings in the text (e.g. '<|im_start|>') map to their ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        if not text:
            return []
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = [int(i) for i in ids]
        # The backend silently drops unknown ids; a wrong id here is an engine bug worth surfacing.
        if out and (min(out) < 0 or max(out) >= self._vocab_size):
            bad = next(i for i in out if i < 0 or i >= self._vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self._vocab_size})")
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of a token sequence; incomplete UTF-8 at either end shows as U+FFFD."""
        return self._backend.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (added tokens: their UTF-8 text)."""
        (token_id,) = self._check_ids([token_id])
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        raw = self._backend.id_to_token(token_id)
        if self._byte_level and all(c in _BYTE_OF_CHAR for c in raw):
            return bytes(_BYTE_OF_CHAR[c] for c in raw)
        return raw.replace("▁", " ").encode("utf-8")  # sentencepiece spells spaces as '▁'

    def id_to_piece(self, token_id: int, visible_whitespace: bool = False) -> str:
        """Human-readable text of one token for visualizations.

        Bytes that are not a whole UTF-8 character (half an emoji) appear as `<0xF0>`; with
        `visible_whitespace`, space/newline/tab/CR become ␣ ↵ ⇥ ␍ so they show in labels.
        """
        data = self.token_bytes(token_id)
        text = data.decode("utf-8", errors="surrogateescape")
        text = _ESCAPED_BYTE.sub(lambda m: f"<0x{ord(m.group()) - 0xDC00:02X}>", text)
        return text.translate(_VISIBLE_WHITESPACE) if visible_whitespace else text

    # ---- chat ---------------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self.hf.chat_template)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text the chat template makes of `messages` (dicts with 'role' and 'content')."""
        if not self.has_chat_template:
            raise ValueError("this tokenizer has no chat template; send a plain text prompt instead")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError("messages must be a list of dicts with a 'role' key")
        return self.hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of the rendered chat prompt."""
        # The template writes any BOS itself, so the post-processor must not add another.
        return self.encode(self.render_chat(messages, add_generation_prompt, tools), add_special_tokens=False)


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
