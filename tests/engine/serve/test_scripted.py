"""The step logic on a scripted model (no weights): finishing rules, per-row contexts, generate() = the core.

Every expected output here is written down by hand: the script says which token follows which context,
so a row that saw another row's tokens, a wrong cache length or a finishing rule applied twice shows up
as a different text.
"""

from __future__ import annotations

import pytest

from tests.fakes import ByteTokenizer, ScriptedModel, prompt, spell
from tiny_llm_playground.engine.events import FinishEvent, TokenEvent
from tiny_llm_playground.engine.generate import generate
from tiny_llm_playground.engine.sampling import SamplingParams
from tiny_llm_playground.engine.serve.config import EngineConfig
from tiny_llm_playground.engine.serve.engine_core import EngineCore
from tiny_llm_playground.engine.serve.sequence import PromptError, Sequence

GREEDY = SamplingParams(temperature=0, max_tokens=64)


def run_generate(model, ids, params=GREEDY, **kw) -> tuple[list[TokenEvent], FinishEvent]:
    events = list(generate(model, ByteTokenizer(), ids, params, **kw))
    assert all(isinstance(e, TokenEvent) for e in events[:-1]) and isinstance(events[-1], FinishEvent)
    return events[:-1], events[-1]


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_writes_the_script_and_stops_at_eos(use_cache):
    model = ScriptedModel(spell("hello, world"))
    tokens, fin = run_generate(model, prompt("Say hi"), use_cache=use_cache)
    assert fin.reason == "eos" and fin.text == "hello, world"
    assert "".join(t.text for t in tokens) + fin.tail == fin.text
    assert [t.index for t in tokens] == list(range(len("hello, world")))
    if use_cache:  # the prompt in one forward, then one token per forward
        assert model.calls == [(1, 7)] + [(1, 1)] * len("hello, world")
    else:  # the week-1 path recomputes the whole sequence every step
        assert [L for _, L in model.calls] == list(range(7, 7 + len("hello, world") + 1))


def test_stop_strings_and_the_length_limit_finish_once():
    model = ScriptedModel(spell("abc STOP def"))
    _, fin = run_generate(model, prompt("x"), SamplingParams(temperature=0, stop=("STOP",)))
    assert (fin.reason, fin.text) == ("stop", "abc ")
    tokens, fin = run_generate(model, prompt("x"), SamplingParams(temperature=0, max_tokens=3))
    assert (fin.reason, fin.text, len(tokens)) == ("length", "abc", 3)
    tokens, fin = run_generate(model, prompt("x"), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    assert fin.reason == "length" and len(tokens) == 40 and fin.text.startswith("abc STOP def")


def test_the_context_limit_bounds_the_reply_and_bad_prompts_are_refused():
    model = ScriptedModel(spell("0123456789" * 5), context=20)
    tokens, fin = run_generate(model, prompt("abcdefghi"))  # 10 prompt tokens: room for 10 more
    assert fin.reason == "length" and fin.text == "0123456789"
    with pytest.raises(PromptError, match="empty"):
        run_generate(model, [])
    with pytest.raises(PromptError, match="context holds 20"):
        run_generate(model, list(range(20)))


def test_batched_rows_each_see_only_their_own_context():
    """Six requests with different prompts and scripts through one core, prompts in chunks of 3, decode
    rows batched: each writes exactly its own script's reply."""
    replies = ["one", "two two", "three three three", "4", "five!", "six six six six"]

    def script(context):  # the reply is chosen by the prompt's second token, so rows must not mix
        if len(context) < 2:  # inside the prompt: any logits (only a prompt's last position is sampled)
            return 0
        return spell(replies[context[1] - ord("a")])(context)

    model = ScriptedModel(script)
    core = EngineCore(model, EngineConfig(max_batch=3, prefill_chunk=3, max_tokens_per_step=8))
    events: dict[int, list] = {}
    for i in range(len(replies)):
        events[i] = []
        ids = prompt(chr(ord("a") + i) + "?" * i)  # prompts of different lengths
        core.add(Sequence(i, ids, GREEDY, context=512, tokenizer=ByteTokenizer(), emit=events[i].append))
    steps = core.run()
    assert max(s.decode_rows for s in steps) == 3 and any(s.phase == "mixed" for s in steps)
    for i, want in enumerate(replies):
        fin = events[i][-1]
        assert isinstance(fin, FinishEvent) and (fin.reason, fin.text) == ("eos", want), i
    assert core.pool.full and not core.runner._buffers


def test_scripted_logits_are_sampled_as_given():
    """A script may return whole logits: the sampler draws from them (here: two tokens, equal weight)."""
    import numpy as np

    logits = np.full(260, -1e9, dtype=np.float32)
    logits[[ord("a"), ord("b")]] = 0.0
    model = ScriptedModel(lambda ctx: logits if len(ctx) < 40 else 256)
    tokens, fin = run_generate(model, [1], SamplingParams(temperature=1.0, seed=7, max_tokens=64))
    assert set(fin.text) == {"a", "b"} and len(tokens) == 39 and fin.reason == "eos"
    assert all(abs(t.sample.prob - 0.5) < 1e-9 for t in tokens)


def test_a_failing_forward_comes_out_of_generate_as_raised_while_the_core_reports_it():
    """generate() (one caller, one request) gets the error itself; a shared core ends the requests of the
    failed forward with an ErrorEvent (rows that shared it too) and keeps serving."""

    class Broken(Exception):
        pass

    def script(context):
        if len(context) > 5 and context[1] == ord("b"):
            raise Broken("the kernel broke")
        return spell("ok")(context)

    model = ScriptedModel(script)
    with pytest.raises(Broken, match="kernel broke"):
        run_generate(model, prompt("bad"))
    core = EngineCore(model, EngineConfig(max_batch=2))
    events = {0: [], 1: []}
    for rid, text in ((0, "bad"), (1, "abc")):
        core.add(Sequence(rid, prompt(text), GREEDY, context=512, tokenizer=ByteTokenizer(), emit=events[rid].append))
        core.run()
    assert "kernel broke" in events[0][-1].message
    assert (events[1][-1].reason, events[1][-1].text) == ("eos", "ok")
    assert core.pool.full
