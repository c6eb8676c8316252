"""Tokenizer, GGUF tokenizer conversion, streaming detokenizer and stop strings.

Unit tests build a tiny byte-level BPE with `tokenizers` (and a tiny GGUF with `gguf.GGUFWriter`), so they
need no weights. `real_model` tests use the real Qwen2.5-Coder GGUF and compare against transformers' own
GGUF tokenizer converter (fed from fields we parse, since its file reader needs torch) and known ids.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import gguf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as RawTokenizer
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as HF_QWEN2_REGEX

from tiny_llm_playground.engine.loader.gguf_tokenizer import (
    QWEN2_SPLIT_REGEX,
    special_token_ids,
    tokenizer_files_from_gguf,
)
from tiny_llm_playground.engine.text import (
    REPLACEMENT_CHAR,
    StopStringMatcher,
    StreamingDetokenizer,
    Tokenizer,
    bytes_to_unicode,
)

BYTE_CHAR = hf_bytes_to_unicode()  # the reference table, independent of engine.text's copy


def spell(data: bytes) -> str:
    """A byte string in byte-level BPE spelling."""
    return "".join(BYTE_CHAR[b] for b in data)


# Merges chosen so characters split *inside* tokens: '你' = [E4 BD][A0], '😀' = [F0 9F][98 80].
TINY_MERGES: list[tuple[str, str]] = [
    (spell(b"\xe4"), spell(b"\xbd")),
    (spell(b"\xf0"), spell(b"\x9f")),
    (spell(b"\x98"), spell(b"\x80")),
    (spell(b"h"), spell(b"e")),
    (spell(b"he"), spell(b"l")),
    (spell(b" "), spell(b"w")),
]
TINY_SPECIALS = ["<|end|>", "<|start|>"]
TINY_TEMPLATE = (
    "{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


def tiny_vocab() -> dict[str, int]:
    vocab = {BYTE_CHAR[b]: b for b in range(256)}  # id == byte value
    for left, right in TINY_MERGES:
        vocab[left + right] = len(vocab)
    return vocab


def tiny_raw() -> RawTokenizer:
    raw = RawTokenizer(models.BPE(vocab=tiny_vocab(), merges=TINY_MERGES, fuse_unk=False, byte_fallback=False))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIALS])
    return raw


@pytest.fixture(scope="module")
def tiny() -> Tokenizer:
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tiny_raw(),
        eos_token="<|end|>",
        chat_template=TINY_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    return Tokenizer(hf)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    tiny_raw().save(str(tmp_path / "tokenizer.json"))
    config = {"eos_token": "<|end|>", "chat_template": TINY_TEMPLATE, "bos_token": None}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = False) -> list[str]:
    """All deltas of a streaming decode, the final flush last."""
    det = StreamingDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    return [det.add(i) for i in ids] + [det.finalize()]


# ---- byte table and tiny tokenizer ---------------------------------------------------------------------


def test_bytes_to_unicode_matches_transformers_table():
    assert bytes_to_unicode() == hf_bytes_to_unicode()


def test_tiny_tokenizer_splits_characters_inside_tokens(tiny: Tokenizer):
    ids = tiny.encode("你😀")
    pieces = [tiny.token_bytes(i) for i in ids]
    assert pieces == [b"\xe4\xbd", b"\xa0", b"\xf0\x9f", b"\x98\x80"]


# ---- StreamingDetokenizer ------------------------------------------------------------------------------


def test_stream_emits_cjk_and_emoji_whole(tiny: Tokenizer):
    ids = tiny.encode("hello 你好😀!")
    deltas = stream(tiny, ids)
    assert "".join(deltas) == "hello 你好😀!"
    assert [d for d in deltas if d] == ["hel", "l", "o", " ", "你", "好", "😀", "!"]
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


def test_stream_holds_half_an_emoji_until_finalize(tiny: Tokenizer):
    first_half = tiny.token_to_id(spell(b"\xf0\x9f"))
    det = StreamingDetokenizer(tiny)
    assert det.add(first_half) == ""
    assert det.has_pending
    assert det.finalize() == REPLACEMENT_CHAR  # the full decode shows the same U+FFFD
    assert not det.has_pending


def test_stream_special_tokens_kept_or_skipped(tiny: Tokenizer):
    ids = tiny.encode("hi<|end|>")
    assert "".join(stream(tiny, ids)) == "hi<|end|>"
    assert "".join(stream(tiny, ids, skip_special_tokens=True)) == "hi"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_stream_of_valid_text_never_emits_a_partial_character(tiny: Tokenizer, text: str):
    deltas = stream(tiny, tiny.encode(text))
    emitted = ""
    for delta in deltas:
        assert REPLACEMENT_CHAR not in delta or REPLACEMENT_CHAR in text
        emitted += delta
        assert text.startswith(emitted)
    assert emitted == text


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_stream_concatenation_equals_full_decode_for_random_ids(tiny: Tokenizer, data: st.DataObject):
    # Random ids include lone continuation bytes, half characters and special tokens: invalid UTF-8 too.
    ids = data.draw(st.lists(st.integers(0, tiny.vocab_size - 1), max_size=30))
    skip = data.draw(st.booleans())
    assert "".join(stream(tiny, ids, skip)) == tiny.decode(ids, skip_special_tokens=skip)


def test_stream_decodes_only_a_small_window():
    class CountingDecoder:
        def __init__(self, tok: Tokenizer) -> None:
            self.tok, self.longest = tok, 0

        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            self.longest = max(self.longest, len(ids))
            return self.tok.decode(ids, skip_special_tokens)

    tok = Tokenizer(PreTrainedTokenizerFast(tokenizer_object=tiny_raw(), clean_up_tokenization_spaces=False))
    counter = CountingDecoder(tok)
    ids = tok.encode("hello world 你好😀 " * 200)
    assert "".join(stream(counter, ids)) == "hello world 你好😀 " * 200  # type: ignore[arg-type]
    # Window = last emitted chunk (up to 3 one-byte tokens of '好') + the unfinished tail; ~1400 tokens fed.
    assert counter.longest <= 6, "each step should decode only the unfinished tail, not the whole text"


# ---- Tokenizer -----------------------------------------------------------------------------------------


def test_from_dir_loads_and_round_trips(tiny_dir: Path):
    tok = Tokenizer.from_dir(tiny_dir)
    assert tok.vocab_size == 256 + len(TINY_MERGES) + len(TINY_SPECIALS)
    assert tok.decode(tok.encode("hello\tworld  你")) == "hello\tworld  你"
    assert tok.eos_token_ids == {tok.token_to_id("<|end|>")}
    assert tok.bos_token_id is None


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json"])
def test_from_dir_missing_file_names_it(tiny_dir: Path, missing: str):
    (tiny_dir / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        Tokenizer.from_dir(tiny_dir)


def test_from_dir_missing_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nope")


def test_from_dir_reads_generation_config_eos_and_template_file(tiny_dir: Path):
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tiny_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (tiny_dir / "chat_template.jinja").write_text(TINY_TEMPLATE)
    (tiny_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    tok = Tokenizer.from_dir(tiny_dir)
    assert tok.eos_token_ids == {7, 8, tok.token_to_id("<|end|>")}
    assert tok.render_chat([{"role": "user", "content": "x"}]) == "<|start|>user\nx<|end|>\n<|start|>assistant\n"


def test_encode_empty_text_is_empty_and_non_text_rejected(tiny: Tokenizer):
    assert tiny.encode("") == []
    with pytest.raises(TypeError):
        tiny.encode(b"bytes")  # type: ignore[arg-type]


def test_decode_rejects_ids_outside_vocabulary(tiny: Tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.decode([1, tiny.vocab_size])
    with pytest.raises(ValueError):
        tiny.decode([-1])


def test_id_to_piece_shows_partial_bytes_and_whitespace(tiny: Tokenizer):
    assert tiny.id_to_piece(tiny.token_to_id(spell(b"\xf0\x9f"))) == "<0xF0><0x9F>"
    assert tiny.id_to_piece(tiny.token_to_id(spell(b" w"))) == " w"
    assert tiny.id_to_piece(tiny.token_to_id(spell(b" w")), visible_whitespace=True) == "␣w"
    assert tiny.id_to_piece(ord("\n"), visible_whitespace=True) == "↵"
    assert tiny.id_to_piece(tiny.token_to_id("<|end|>")) == "<|end|>"


def test_chat_template_renders_and_tokenizes(tiny: Tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    text = tiny.render_chat(messages)
    assert text == "<|start|>system\nS<|end|>\n<|start|>user\nHi<|end|>\n<|start|>assistant\n"
    assert tiny.render_chat(messages, add_generation_prompt=False).endswith("Hi<|end|>\n")
    ids = tiny.apply_chat_template(messages)
    assert ids == tiny.encode(text) and ids[0] == tiny.token_to_id("<|start|>")


def test_chat_without_template_is_a_clear_error():
    tok = Tokenizer(PreTrainedTokenizerFast(tokenizer_object=tiny_raw()))
    with pytest.raises(ValueError, match="no chat template"):
        tok.render_chat([{"role": "user", "content": "Hi"}])


# ---- StopStringMatcher ---------------------------------------------------------------------------------


def run_stops(stops: list[str], deltas: list[str]) -> tuple[str, bool]:
    m = StopStringMatcher(stops)
    out, stopped = "", False
    for d in deltas:
        safe, stopped = m.push(d)
        out += safe
        if stopped:
            break
    return (out if stopped else out + m.flush()), stopped


def test_stop_spanning_two_deltas():
    m = StopStringMatcher(["</end>"])
    assert m.push("abc</e") == ("abc", False)
    assert m.push("nd>tail") == ("", True)
    assert m.matched == "</end>"
    assert m.push("more") == ("", True)
    assert m.flush() == ""


def test_held_prefix_released_when_it_does_not_complete():
    m = StopStringMatcher(["</end>"])
    assert m.push("ab<") == ("ab", False)
    assert m.push("x") == ("<x", False)
    assert m.push("</en") == ("", False)
    assert m.flush() == "</en"  # stream ended some other way: the tail is real text


def test_stop_at_start():
    assert StopStringMatcher(["STOP"]).push("STOP and more") == ("", True)


def test_no_stop_passes_everything():
    assert run_stops(["zzz"], ["a", "b z", "z", "c"]) == ("ab zzc", False)
    assert run_stops([], ["any", "thing"]) == ("anything", False)


def test_multiple_stops_earliest_wins():
    m = StopStringMatcher(["world", "lo"])
    assert m.push("hello world") == ("hel", True)
    assert m.matched == "lo"


def test_overlapping_stop_prefixes():
    m = StopStringMatcher(["abcd", "bce"])
    assert m.push("xabc") == ("x", False)  # 'abc' could start 'abcd', 'bc' could start 'bce'
    assert m.push("e") == ("a", True)
    assert m.matched == "bce"


def test_self_overlapping_stop_fed_char_by_char():
    assert run_stops(["aab"], list("aaab")) == ("a", True)


def test_bad_stop_arguments():
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])
    with pytest.raises(TypeError):
        StopStringMatcher("STOP")  # type: ignore[arg-type]


def first_completed_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Reference for char-by-char streaming: the stop that *ends* first wins (ties: the longer one)."""
    ends = [(i + len(s), i) for s in stops for i in range(len(text)) if text.startswith(s, i)]
    return (text[: min(ends)[1]], True) if ends else (text, False)


def test_first_completed_stop_wins_over_a_longer_earlier_one():
    # Generation cannot wait to see whether '\naa' completes once 'a' has appeared.
    assert run_stops(["a", "\naa"], list("\naa")) == ("\n", True)
    assert run_stops(["a", "\naa"], ["\naa"]) == ("", True)  # same delta: the earlier start wins


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc\n", max_size=30),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=6),
)
def test_stop_matcher_on_random_streams(text: str, stops: list[str], cuts: list[int]):
    assert run_stops(stops, list(text)) == first_completed_stop(text, stops)

    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out, stopped = run_stops(stops, deltas)
    assert text.startswith(out)
    if not stopped:
        assert out == text and not any(s in text for s in stops)
        return
    assert not any(s in out for s in stops)
    assert any(text.startswith(s, len(out)) for s in stops)  # cut right before a stop string
    # ... which completed in the first delta where any stop completed.
    first_end = min(i + len(s) for s in stops for i in range(len(text)) if text.startswith(s, i))
    delta_end = next(b for b in bounds if b >= first_end)
    assert any(text.startswith(s, len(out)) and len(out) + len(s) <= delta_end for s in stops)


# ---- GGUF conversion on a tiny GGUF --------------------------------------------------------------------

QWEN_TEMPLATE_SNIPPET = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, model: str = "gpt2", pre: str = "qwen2") -> dict[str, Any]:
    """Write a GGUF with only tokenizer metadata, laid out like Qwen2's; return its fields named as in
    transformers' converter."""
    merges = [f"{a} {b}" for a, b in TINY_MERGES]
    tokens = list(tiny_vocab()) + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "[PAD9]"]
    types = [1] * (len(tokens) - 5) + [3, 3, 3, 4, 5]
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(4096)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(QWEN_TEMPLATE_SNIPPET)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "tokenizer_type": model,
        "pre_tokenizer_type": pre,
        "tokens": tokens,
        "token_type": types,
        "merges": merges,
    }


def test_tiny_gguf_converts_to_qwen2_layout(tmp_path: Path):
    fields = write_tiny_gguf(tmp_path / "t.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    files = tokenizer_files_from_gguf(reader)
    spec = json.loads(files["tokenizer.json"])
    assert QWEN2_SPLIT_REGEX == HF_QWEN2_REGEX
    assert spec["normalizer"] == {"type": "NFC"}
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"] == {"Regex": HF_QWEN2_REGEX} and split["behavior"] == "Isolated"
    assert byte_level["type"] == "ByteLevel" and not byte_level["add_prefix_space"] and not byte_level["use_regex"]
    assert spec["decoder"]["type"] == "ByteLevel"
    added = {t["content"]: (t["id"], t["special"]) for t in spec["added_tokens"]}
    n = len(fields["tokens"])
    assert added == {
        "<|endoftext|>": (n - 5, True),
        "<|im_start|>": (n - 4, True),
        "<|im_end|>": (n - 3, True),
        "<tool_call>": (n - 2, False),  # user-defined: matched whole, but not special
    }

    config = json.loads(files["tokenizer_config.json"])
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["bos_token"] is None and config["add_bos_token"] is False
    assert config["model_max_length"] == 4096 and config["chat_template"] == QWEN_TEMPLATE_SNIPPET
    assert special_token_ids(reader) == {"bos": n - 5, "eos": n - 3, "pad": n - 5}

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.vocab_size == n
    assert tok.eos_token_ids == {n - 3, n - 5}
    assert tok.apply_chat_template([{"role": "user", "content": "hello"}])[:2] == [
        n - 4,
        tok.encode("user")[0],
    ]
    assert tok.decode(tok.encode("hello 你 <tool_call>")) == "hello 你 <tool_call>"


def test_tiny_gguf_matches_transformers_converter(tmp_path: Path):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    fields = write_tiny_gguf(tmp_path / "t.gguf")
    ours = Tokenizer.from_gguf(tmp_path / "t.gguf")
    reference, _ = convert_gguf_tokenizer("qwen2", fields)
    for text in ["hello world", "he said 'hello'  \n\n x", "你好😀<|im_end|>ok", "<tool_call>a</tool_call>"]:
        assert ours.encode(text) == reference.encode(text).ids, text


@pytest.mark.parametrize(
    ("model", "pre", "message"),
    [("llama", "qwen2", "byte-level"), ("gpt2", "xx", "unknown GGUF pre-tokenizer")],
)
def test_unsupported_gguf_tokenizer_is_rejected(tmp_path: Path, model: str, pre: str, message: str):
    write_tiny_gguf(tmp_path / "t.gguf", model=model, pre=pre)
    with pytest.raises(ValueError, match=message):
        tokenizer_files_from_gguf(gguf.GGUFReader(str(tmp_path / "t.gguf")))


# ---- the real Qwen2.5-Coder tokenizer ------------------------------------------------------------------

REAL_TEXTS = [
    "Hello world",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'k': [1, 2, 3]}  # tabs\n",
    "你好，世界！这是一个测试。",
    "日本語のテキストと한국어",
    "emoji 😀👍🏽🇫🇷 and 👨‍👩‍👧 family",
    "a    b\n\n\n  \t x",
    "   leading and trailing   ",
    "mixed: naïve café 123456789 + 3.14159 ÷ ∑ → ok\r\n",
    "<|im_start|>user\nhi<|im_end|>",
    "x = 'it's' + \"don't\"  // I'LL we've",
]


@pytest.fixture(scope="module")
def qwen_reader(qwen_gguf_path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(str(qwen_gguf_path))


@pytest.fixture(scope="module")
def qwen_dir(qwen_reader: gguf.GGUFReader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qwen_tokenizer")
    for name, text in tokenizer_files_from_gguf(qwen_reader).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def qwen(qwen_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(qwen_dir)


@pytest.fixture(scope="module")
def qwen_reference(qwen_reader: gguf.GGUFReader) -> RawTokenizer:
    """transformers' GGUF converter fed with fields we parse (its own file reader imports torch)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    fields = {
        name: qwen_reader.fields[f"tokenizer.{key}"].contents()
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in qwen_reader.fields
    }
    reference, _ = convert_gguf_tokenizer("qwen2", fields)
    return reference


@pytest.mark.real_model
def test_real_known_ids(qwen: Tokenizer):
    assert qwen.vocab_size == 151936
    assert qwen.encode("Hello world") == [9707, 1879]
    assert qwen.encode("<|im_start|>") == [151644]
    assert qwen.encode("<|im_end|>") == [151645]
    assert qwen.encode("<|endoftext|>") == [151643]
    assert qwen.eos_token_ids == {151645, 151643}
    assert qwen.pad_token_id == 151643 and qwen.bos_token_id is None
    assert qwen.id_to_piece(1879) == " world"


@pytest.mark.real_model
@pytest.mark.parametrize("text", REAL_TEXTS)
def test_real_round_trip_and_reference_ids(qwen: Tokenizer, qwen_reference: RawTokenizer, text: str):
    ids = qwen.encode(text)
    assert qwen.decode(ids) == text
    # The reference has no NFC normalizer (HF's Qwen2 tokenizer does); these texts are already NFC.
    assert unicodedata.is_normalized("NFC", text)
    assert ids == qwen_reference.encode(text).ids


@pytest.mark.real_model
def test_real_nfc_normalization(qwen: Tokenizer):
    assert qwen.encode("cafe\u0301") == qwen.encode("café")


@pytest.mark.real_model
@pytest.mark.parametrize("text", REAL_TEXTS)
def test_real_streaming_emits_whole_characters(qwen: Tokenizer, text: str):
    deltas = stream(qwen, qwen.encode(text))
    assert "".join(deltas) == text
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


@pytest.mark.real_model
def test_real_emoji_tokens_split_mid_character_show_bytes(qwen: Tokenizer):
    ids = qwen.encode("👨‍👩‍👧")
    pieces = [qwen.id_to_piece(i) for i in ids]
    assert b"".join(qwen.token_bytes(i) for i in ids) == "👨‍👩‍👧".encode()
    assert any("<0x" in p for p in pieces), pieces  # some token holds part of a 4-byte emoji


@pytest.mark.real_model
def test_real_chat_template(qwen: Tokenizer):
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}]
    assert qwen.render_chat(messages) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = qwen.apply_chat_template(messages)
    assert ids[0] == 151644 and ids.count(151645) == 2
    default = qwen.render_chat([{"role": "user", "content": "Hi"}])
    assert default.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
    assert default.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.real_model
def test_real_folder_loads_with_auto_tokenizer(qwen_dir: Path, qwen: Tokenizer, monkeypatch: pytest.MonkeyPatch):
    # mlx-lm and other HF tools load folders with AutoTokenizer; the converted folder must give the same ids.
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    auto = AutoTokenizer.from_pretrained(str(qwen_dir))
    for text in REAL_TEXTS:
        assert auto.encode(text, add_special_tokens=False) == qwen.encode(text), text
