"""Text ⇄ token ids: the tokenizer wrapper (encode, decode, chat template, token pieces for the views).

`Tokenizer` wraps `transformers.PreTrainedTokenizerFast` built from a folder holding `tokenizer.json` and
`tokenizer_config.json` (an HF/MLX model folder, or the pair `engine.loader.gguf_tokenizer` writes from a
GGUF). Nothing here touches the network.

Rules it keeps:
- `encode("")` is allowed and returns `[]`; rejecting empty prompts is the engine's job.
- `decode` never cleans up spaces: the text of a token sequence is exactly its bytes, so streamed deltas add
  up to the full decode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders
from transformers import PreTrainedTokenizerFast

if TYPE_CHECKING:
    import gguf

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

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

        from tiny_llm_playground.engine.loader.gguf_tokenizer import tokenizer_files_from_gguf

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
