"""The real Qwen2.5-Coder-0.5B-Instruct: logits against mlx-lm, cache vs no-cache, a real task, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.reference_prompts import LIVE, PROMPTS, REFERENCE_FILE, mlx_lm_last_logits, prompt_ids
from tests.utils import assert_writes_a_correct_prime_function, kl_divergence
from tiny_llm_playground.engine.events import FinishEvent
from tiny_llm_playground.engine.generate import generate, last_logits
from tiny_llm_playground.engine.sampling import SamplingParams

pytestmark = pytest.mark.real_model
KL_MAX = 1e-3


@pytest.fixture(scope="module")
def mlx_lm_model(real_model_dir):
    from mlx_lm.utils import load_model as mlx_lm_load

    model, _ = mlx_lm_load(real_model_dir)
    return model


@pytest.fixture(scope="module")
def saved_reference():
    return dict(np.load(REFERENCE_FILE))


def test_capital_of_france_is_paris(real_lm):
    logits = last_logits(real_lm.model, real_lm.tokenizer.encode("The capital of France is"))
    assert real_lm.tokenizer.decode([int(np.argmax(logits))]) == " Paris"


@pytest.mark.parametrize("name", LIVE)
def test_logits_match_mlx_lm_live(real_lm, mlx_lm_model, name):
    ids = prompt_ids(real_lm.tokenizer, name)
    ours = last_logits(real_lm.model, ids)
    ref = mlx_lm_last_logits(mlx_lm_model, ids)
    kl = kl_divergence(ref, ours)
    assert kl <= KL_MAX, f"{name}: KL(mlx-lm || ours) = {kl:.2e}"
    assert int(np.argmax(ours)) == int(np.argmax(ref))


@pytest.mark.parametrize("name", list(PROMPTS))
def test_logits_match_saved_mlx_lm_logits(real_lm, saved_reference, name):
    """Every prompt, the >500-token one included, against mlx-lm logits saved by tests/reference_prompts."""
    ids = prompt_ids(real_lm.tokenizer, name)
    assert ids == saved_reference[f"{name}__ids"].tolist(), "tokenization changed since the reference"
    if name == "long_code":
        assert len(ids) > 500
    ours = last_logits(real_lm.model, ids)
    ref = saved_reference[f"{name}__logits"]
    kl = kl_divergence(ref, ours)
    assert kl <= KL_MAX, f"{name}: KL(mlx-lm || ours) = {kl:.2e}"
    assert int(np.argmax(ours)) == int(np.argmax(ref))


def run(lm, ids, params, use_cache=True) -> FinishEvent:
    events = list(generate(lm.model, lm.tokenizer, ids, params, use_cache=use_cache))
    assert isinstance(events[-1], FinishEvent)
    return events[-1]


@pytest.mark.parametrize("name", ["code", "capital", "cjk_chat"])
def test_greedy_with_and_without_cache_identical_for_64_tokens(real_lm, name):
    ids = prompt_ids(real_lm.tokenizer, name)
    # Stop strings and EOS off the table: compare exactly 64 tokens (EOS may still end both early).
    params = SamplingParams(temperature=0, max_tokens=64)
    cached = run(real_lm, ids, params, use_cache=True)
    uncached = run(real_lm, ids, params, use_cache=False)
    assert cached.token_ids == uncached.token_ids
    assert cached.text == uncached.text
    assert len(cached.token_ids) == 64 or cached.reason == "eos"


def test_writes_a_correct_prime_function(real_lm):
    prompt = "Write a Python function that checks whether a number is prime."
    ids = real_lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    done = run(real_lm, ids, SamplingParams(temperature=0, max_tokens=200))
    assert_writes_a_correct_prime_function(done.text)


def test_stop_string_ends_generation_and_is_excluded(real_lm):
    ids = real_lm.tokenizer.encode("def fibonacci(n):\n    ")
    done = run(real_lm, ids, SamplingParams(temperature=0, max_tokens=64, stop=("return",)))
    assert done.reason == "stop"
    assert "return" not in done.text


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=600)


def test_cli_logits_puts_paris_on_top(tmp_path, real_model_dir):
    out = tmp_path / "x.npy"
    r = cli("logits", "--model", "qwen2.5-coder-0.5b", "--prompt", "The capital of France is", "--out", str(out))
    assert r.returncode == 0, r.stderr
    logits = np.load(out)
    assert logits.dtype == np.float32 and logits.shape == (151936,)
    assert "' Paris'" in r.stdout.split("top:")[1].split(",")[0]


def test_cli_generate_json(real_lm):
    r = cli("generate", "--prompt", "def add(a, b):", "--max-tokens", "8", "--temperature", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("text", "token_ids", "prompt_tokens", "prefill_tps", "decode_tps"):
        assert key in out
    assert out["prompt_tokens"] == len(real_lm.tokenizer.encode("def add(a, b):"))
    assert 1 <= len(out["token_ids"]) <= 8 and out["generated_tokens"] == len(out["token_ids"])
    assert out["prefill_tps"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--model", "gpt-9", "--prompt", "x"], "known models: qwen2.5-coder-0.5b"),
        (["generate", "--prompt", "   "], "prompt is empty"),
        (["generate", "--prompt", "x", "--temperature", "-1"], "temperature must be >= 0"),
        (["generate", "--prompt", "x", "--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["generate", "--prompt", "x", "--top-k", "-3"], "top_k must be an integer >= 0"),
    ],
)
def test_cli_bad_input_gets_a_clear_error(args, message, real_model_dir):
    r = cli(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_prompt_longer_than_context_names_both_numbers(real_lm):
    from tiny_llm_playground.engine import PromptError

    ctx = real_lm.model.args.max_position_embeddings
    with pytest.raises(PromptError, match=rf"{ctx + 5} tokens but the model's context holds {ctx}"):
        next(generate(real_lm.model, real_lm.tokenizer, [42] * (ctx + 5), SamplingParams()))
