"""Rebuild a Hugging Face tokenizer folder (`tokenizer.json` + `tokenizer_config.json`) from a GGUF file.

A GGUF stores the tokenizer as plain metadata: the vocabulary (`tokenizer.ggml.tokens`), the BPE merges,
a type per token (normal / control / user-defined / unused ...), a few special ids and the chat template.
This module turns that into the JSON files an HF Qwen2 folder would ship, using the `tokenizers` library,
so the rest of the engine loads one kind of tokenizer whatever the weights came from.

Rules it keeps:
- Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) are supported; anything else raises
  `ValueError` instead of producing a tokenizer that silently mis-tokenizes.
- The pipeline copies Qwen2's own `tokenizer.json`: NFC normalizer, `Split(regex, isolated)` followed by
  `ByteLevel(add_prefix_space=False, use_regex=False)`, ByteLevel post-processor and decoder.
- Every GGUF token keeps its id, placeholders included (`[PAD151665]`...), so the tokenizer's size equals
  the model's embedding rows.
- transformers' own GGUF path is not used: it reads tensors with torch, which the engine does not install.
"""

from __future__ import annotations

import json
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RawTokenizer

# llama.cpp's `tokenizer.ggml.token_type` values (gguf.TokenType).
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4

# The split regex each `tokenizer.ggml.pre` stands for; these are the strings HF's tokenizer.json files use.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_REGEX_BY_PRE: dict[str, str] = {
    "qwen2": QWEN2_SPLIT_REGEX,
    "deepseek-r1-qwen": QWEN2_SPLIT_REGEX,
}


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """The decoded value of one metadata field, or `default` when the file lacks it."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _require(reader: gguf.GGUFReader, key: str) -> Any:
    value = _field(reader, key)
    if value is None:
        raise ValueError(f"GGUF file has no {key!r} field; cannot build its tokenizer")
    return value


def special_token_ids(reader: gguf.GGUFReader) -> dict[str, int]:
    """The special ids the GGUF declares: any of `bos`, `eos`, `pad`, `unk`, `eot` it has."""
    keys = {
        "bos": "tokenizer.ggml.bos_token_id",
        "eos": "tokenizer.ggml.eos_token_id",
        "pad": "tokenizer.ggml.padding_token_id",
        "unk": "tokenizer.ggml.unknown_token_id",
        "eot": "tokenizer.ggml.eot_token_id",
    }
    return {name: int(v) for name, key in keys.items() if (v := _field(reader, key)) is not None}


def _byte_level_alphabet() -> set[str]:
    return set(pre_tokenizers.ByteLevel.alphabet())


def build_raw_tokenizer(reader: gguf.GGUFReader) -> RawTokenizer:
    """The `tokenizers.Tokenizer` the GGUF describes: byte-level BPE, Qwen2 pre-tokenizer, added tokens."""
    model_kind = _require(reader, "tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ValueError(f"only byte-level BPE GGUF tokenizers ('gpt2') are supported, this file has {model_kind!r}")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre not in SPLIT_REGEX_BY_PRE:
        raise ValueError(
            f"unknown GGUF pre-tokenizer {pre!r}; known: {sorted(SPLIT_REGEX_BY_PRE)} "
            "(a wrong split regex would change token ids without any error)"
        )
    tokens: list[str] = list(_require(reader, "tokenizer.ggml.tokens"))
    merges_text: list[str] = list(_require(reader, "tokenizer.ggml.merges"))
    token_types: list[int] = list(_field(reader, "tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens)))
    if len(token_types) != len(tokens):
        raise ValueError(f"GGUF has {len(tokens)} tokens but {len(token_types)} token types")

    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("GGUF vocabulary has duplicate token strings; ids would not round-trip")
    # Byte-level tokens never contain a real space (it is spelled 'Ġ'), so one split is exact.
    merges = [tuple(m.split(" ", 1)) for m in merges_text]
    if any(len(m) != 2 for m in merges):
        raise ValueError("malformed GGUF merge: expected 'left right'")

    raw = RawTokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
            ignore_merges=False,
        )
    )
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX_BY_PRE[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    raw.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    raw.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)

    # Control tokens (<|im_start|>, <|endoftext|> ...) must match whole in text and count as special;
    # user-defined ones (<tool_call>) match whole but stay ordinary text. A control token spelled outside
    # the byte alphabet is a llama.cpp mislabel and is left as a plain vocab entry.
    alphabet = _byte_level_alphabet()
    control = [
        AddedToken(tok, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for tok, kind in zip(tokens, token_types, strict=True)
        if kind == TOKEN_CONTROL and set(tok) <= alphabet
    ]
    user = [
        AddedToken(tok, special=False, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for tok, kind in zip(tokens, token_types, strict=True)
        if kind == TOKEN_USER_DEFINED
    ]
    raw.add_special_tokens(control)
    raw.add_tokens(user)
    if raw.get_vocab_size(with_added_tokens=True) != len(tokens):
        # Added tokens already exist in the vocab, so their ids must not move or grow the table.
        raise AssertionError("added tokens changed the vocabulary size; ids would not match the model")
    return raw


def tokenizer_config_from_gguf(reader: gguf.GGUFReader) -> dict[str, Any]:
    """The `tokenizer_config.json` content: special tokens, chat template and context length."""
    tokens: list[str] = list(_require(reader, "tokenizer.ggml.tokens"))
    token_types: list[int] = list(_field(reader, "tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens)))
    if len(token_types) != len(tokens):
        raise ValueError(f"GGUF has {len(tokens)} tokens but {len(token_types)} token types")
    ids = special_token_ids(reader)
    arch = _field(reader, "general.architecture", "qwen2")
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))

    def name(key: str) -> str | None:
        return tokens[ids[key]] if key in ids else None

    eos = name("eos")
    if eos is None and "<|im_end|>" in tokens:
        eos = "<|im_end|>"
    pad = name("pad") or ("<|endoftext|>" if "<|endoftext|>" in tokens else None)
    context_length = _field(reader, f"{arch}.context_length")
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        # GGUF files often name a BOS id even when the model never uses one (Qwen copies <|endoftext|>);
        # HF's Qwen2 config says bos_token null, so a BOS is only declared when the file asks to add it.
        "bos_token": name("bos") if add_bos else None,
        "add_bos_token": add_bos,
        "add_eos_token": bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": name("unk"),
        "additional_special_tokens": [
            tok
            for tok, kind in zip(tokens, token_types, strict=True)
            if kind == TOKEN_CONTROL and tok not in (eos, pad)
        ],
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "model_max_length": int(context_length) if context_length is not None else 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
    }


def tokenizer_files_from_gguf(reader: gguf.GGUFReader) -> dict[str, str]:
    """JSON text of `tokenizer.json` and `tokenizer_config.json`, keyed by file name, for this GGUF."""
    raw = build_raw_tokenizer(reader)
    config = tokenizer_config_from_gguf(reader)
    return {
        "tokenizer.json": raw.to_str(pretty=False),
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2),
    }
