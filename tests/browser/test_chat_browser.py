"""The Chat tab in a real browser: `python -m app` with the real model, driven by Debian chromium.

Checks that a reply streams (the assistant's text changes several times before the stats line appears),
that bad input gives a readable notice and no traceback, that the page fetches nothing from outside the
server (it must work offline). Fixtures: tests/browser/conftest.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.browser.waits import REPLY_TIMEOUT_MS, UI_TIMEOUT_MS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]

LAST_BOT = "() => { const m = document.querySelectorAll('#chat-box [data-testid=\"bot\"]');"
LAST_BOT += " return m.length ? m[m.length - 1].innerText : null; }"
STATS = "() => { const s = document.querySelector('#chat-stats .chat-stats-line');"
STATS += " return s ? s.innerText : null; }"


def _set_number(pg, label: str, value: str) -> None:
    box = pg.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")


def _set_slider(pg, label: str, value: str) -> None:
    """Type into the number box beside a slider (Gradio labels it "number input for <label>")."""
    box = pg.locator(f'input[aria-label="number input for {label}"]')
    box.fill(value)
    box.press("Tab")


def test_chat_streams_reply_and_shows_stats(page):
    _set_number(page, "Seed (−1 = random)", "0")
    _set_slider(page, "Max tokens", "64")
    page.fill("#chat-input textarea", "Write a Python function that reverses a string.")
    page.click("#chat-send")

    seen: list[str] = []  # every distinct assistant text observed before the stats line appeared
    stats = None
    deadline = time.monotonic() + REPLY_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        stats = page.evaluate(STATS)
        if stats:
            break
        text = page.evaluate(LAST_BOT)
        if text and text.strip() and (not seen or text != seen[-1]):
            seen.append(text)
        time.sleep(0.05)
    assert stats, f"no stats line within {REPLY_TIMEOUT_MS / 1000:.0f} s; last text seen: {seen[-1:]!r}"
    assert len(seen) >= 3, f"the reply did not stream (distinct texts seen while generating: {seen!r})"
    assert len(seen) - 1 >= 2, f"the text changed fewer than twice before the stats line: {seen!r}"
    assert len(seen[-1]) > len(seen[0]), "the streamed text did not grow"
    final = page.evaluate(LAST_BOT)
    assert final and len(final) >= len(seen[-1]) - 5  # the finished reply is at least what was streamed

    for part in ("prompt", "prefill", "tok/s", "decode", "finish:"):
        assert part in stats, stats
    assert page.input_value("#chat-input textarea") == "", "the message box is cleared after sending"
    assert "Traceback" not in page.content()
    assert page.outside_requests == [], f"the page fetched from outside the server: {page.outside_requests}"
    # The docs' chat.png is taken by test_playground_browser.py (with a token clicked).


def test_empty_message_shows_notice_not_traceback(page):
    page.fill("#chat-input textarea", "   ")
    page.click("#chat-send")
    notice = page.locator("#chat-stats .chat-error")
    notice.wait_for(timeout=UI_TIMEOUT_MS)
    assert "empty" in notice.inner_text()
    toast = page.get_by_text("The message is empty", exact=False).first
    toast.wait_for(timeout=UI_TIMEOUT_MS)
    assert page.evaluate(LAST_BOT) is None, "nothing was sent to the model"
    assert "Traceback" not in page.content()


def test_invalid_seed_shows_notice_and_engine_keeps_serving(page):
    _set_slider(page, "Max tokens", "8")
    _set_number(page, "Seed (−1 = random)", "-5")
    page.fill("#chat-input textarea", "Say hi.")
    page.click("#chat-send")
    notice = page.locator("#chat-stats .chat-error")
    notice.wait_for(timeout=UI_TIMEOUT_MS)
    assert "seed" in notice.inner_text()
    assert "Traceback" not in page.content()
    assert page.input_value("#chat-input textarea") == "Say hi.", "a refused message stays in the box"

    _set_number(page, "Seed (−1 = random)", "1")
    page.click("#chat-send")
    stats = page.locator("#chat-stats .chat-stats-line")
    stats.wait_for(timeout=REPLY_TIMEOUT_MS)
    assert page.evaluate(LAST_BOT)
    new_tokens = int(stats.inner_text().split(" new tok")[0].split()[-1])
    assert 1 <= new_tokens <= 8, f"max new tokens (8) was not applied: {stats.inner_text()}"


def test_stop_cancels_reply(page):
    _set_slider(page, "Max tokens", "400")
    page.fill("#chat-input textarea", "Write a long story about a robot learning to code.")
    page.click("#chat-send")
    page.wait_for_function(
        "() => { const m = document.querySelectorAll('#chat-box [data-testid=\"bot\"]');"
        " return m.length && m[m.length - 1].innerText.length > 20; }",
        timeout=REPLY_TIMEOUT_MS,
    )
    page.click("#chat-stop")
    stats = page.locator("#chat-stats .chat-stats-line")
    stats.wait_for(timeout=UI_TIMEOUT_MS)
    assert "cancelled" in stats.inner_text()
