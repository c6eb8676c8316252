"""The playground's newer views in a real browser on the real model (fixtures: conftest.py).

Every tab loads; a reply streams as probability-coloured tokens and clicking one shows its distribution
(the sampling sliders redraw it); two browser sessions generating at once both finish and both appear as
rows of the batching view; the class-demo button adds N requests; bad input gives a notice, not a
traceback. Prints (does not assert) the time from Send to the first streamed token for a ~100-token
prompt. Saves the chat, batching and course screenshots (1280x800).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.browser.waits import REPLY_TIMEOUT_MS, UI_TIMEOUT_MS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "assets" / "screenshots"
TABS = {
    "Chat": "#chat-input textarea",
    "Attention": "#inspect-run",
    "RoPE": "#rope-status",
    "Logit lens": "#lens-status",
    "KV cache & batching": "#batch-kpis .kpis",
    "Course map": "#course-map table",
}
DIST_TITLE = "() => { const gd = document.querySelector('#chat-dist .js-plotly-plot');"
DIST_TITLE += " return gd && gd.layout && gd.layout.title ? gd.layout.title.text : ''; }"


def _set_slider(pg, label: str, value: str) -> None:
    box = pg.locator(f'input[aria-label="number input for {label}"]')
    box.fill(value)
    box.press("Tab")


def _send(pg, text: str, max_tokens: str = "16") -> float:
    _set_slider(pg, "Max tokens", max_tokens)
    pg.fill("#chat-input textarea", text)
    t0 = time.monotonic()
    pg.click("#chat-send")
    return t0


def _wait_done(pg) -> str:
    stats = pg.locator("#chat-stats .chat-stats-line")
    stats.wait_for(timeout=REPLY_TIMEOUT_MS)
    return stats.inner_text()


def _open(pg, name: str) -> None:
    pg.get_by_role("tab", name=name).click()


def test_every_tab_loads(page):
    for name, selector in TABS.items():
        _open(page, name)
        page.locator(selector).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert "Traceback" not in page.content()


# Click -> first token, timed by the page's own clock: a capture listener stamps the click on Send, a
# MutationObserver stamps the first token span (Playwright's own round trips are not counted).
ARM_LATENCY = """() => {
  window.__sent = null; window.__first = null;
  document.querySelector('#chat-send').addEventListener('click', () => { window.__sent = performance.now(); },
                                                          {capture: true, once: true});
  const obs = new MutationObserver(() => {
    if (window.__sent !== null && document.querySelector('#chat-tokens .tok')) {
      window.__first = performance.now(); obs.disconnect();
    }
  });
  obs.observe(document.body, {subtree: true, childList: true});
}"""
LATENCY = "() => window.__first === null ? null : (window.__first - window.__sent) / 1000"


def test_reply_streams_as_tokens_and_click_shows_distribution(page):
    words = "Here is some context about sorting algorithms and their trade-offs in practice. " * 6
    page.evaluate(ARM_LATENCY)
    _send(page, words + "Now explain in three sentences why quicksort is usually fast.", "24")
    page.wait_for_selector("#chat-tokens .tok", timeout=REPLY_TIMEOUT_MS)
    counts = {page.locator("#chat-tokens .tok").count()}
    while not page.locator("#chat-stats .chat-stats-line").count():
        counts.add(page.locator("#chat-tokens .tok").count())
        time.sleep(0.05)
    stats = _wait_done(page)
    prompt_tokens = int(stats.split("prompt ")[1].split(" tok")[0])
    first = page.evaluate(LATENCY)
    print(f"\n[latency] Send -> first streamed token: {first:.2f} s for a {prompt_tokens}-token prompt ({stats})")
    n = page.locator("#chat-tokens .tok").count()
    assert n >= 2 and len(counts) >= 2, f"token view did not stream: counts seen {sorted(counts)}"

    page.locator("#chat-tokens .tok").nth(2).click()
    page.wait_for_function(f"() => ({DIST_TITLE})().includes('token 2 ')", timeout=UI_TIMEOUT_MS)
    assert page.input_value('input[aria-label="number input for Token #"]') == "2"
    assert page.locator("#chat-tokens .tok.sel").get_attribute("data-i") == "2"
    _set_slider(page, "Top-k", "2")  # redraws this step's distribution from the stored record
    page.wait_for_function(f"() => ({DIST_TITLE})().includes('top-k 2 ')", timeout=UI_TIMEOUT_MS)
    assert "token 2 " in page.evaluate(DIST_TITLE)
    page.locator("#chat-stats").evaluate("e => e.scrollIntoView()")
    page.evaluate("window.scrollBy(0, -90)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "chat.png"))


def test_too_long_prompt_shows_notice_not_traceback(page):
    page.fill("#chat-input textarea", "token " * 40_000)
    page.click("#chat-send")
    notice = page.locator("#chat-stats .chat-error")
    notice.wait_for(timeout=UI_TIMEOUT_MS)
    assert "context" in notice.inner_text() or "tokens" in notice.inner_text()
    assert "Traceback" not in page.content()


def _rows(pg, tag: str) -> list[str]:
    return pg.eval_on_selector_all(
        "#batch-requests tr[data-rid]", f"rs => rs.map(r => r.innerText).filter(t => t.includes('{tag}'))"
    )


def test_two_sessions_generating_at_once_both_finish_and_show_as_rows(browser, server, page):
    other_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    other = other_ctx.new_page()
    other_ctx.set_default_timeout(UI_TIMEOUT_MS)
    try:
        other.goto(server)
        other.wait_for_selector("#chat-input textarea", timeout=UI_TIMEOUT_MS)
        _open(page, "KV cache & batching")
        watcher_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        third = watcher_ctx.new_page()
        watcher_ctx.set_default_timeout(UI_TIMEOUT_MS)
        third.goto(server)
        third.wait_for_selector("#chat-input textarea", timeout=UI_TIMEOUT_MS)
        # Both messages are typed first and sent back to back, so the replies (up to 120 tokens: both stay
        # in the timeline's last 128 steps) run at the same time even when one ends early.
        for pg, text in ((other, "Write a long story about a cache that forgets things."),
                         (third, "Write a long story about a robot who sorts lists.")):  # fmt: skip
            _set_slider(pg, "Max tokens", "120")
            pg.fill("#chat-input textarea", text)
        other.click("#chat-send")
        third.click("#chat-send")
        # Both are running at once: the batching view (polling in `page`) shows two live chat rows.
        page.wait_for_function(
            "() => [...document.querySelectorAll('#batch-requests tr.live')].filter(r => r.innerText.includes('chat')).length >= 2",
            timeout=REPLY_TIMEOUT_MS,
        )
        assert "new tok" in _wait_done(other) and "new tok" in _wait_done(third)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#batch-requests tr.done')].filter(r => r.innerText.includes('chat')).length >= 2",
            timeout=UI_TIMEOUT_MS,
        )
        labels = page.evaluate(
            "() => { const gd = document.querySelector('#batch-timeline .js-plotly-plot');"
            " return gd ? [...new Set(gd._fullData.slice(2).flatMap(t => Array.from(t.y || [])))] : []; }"
        )
        assert sum("chat" in lab for lab in labels) >= 2, labels
        watcher_ctx.close()
    finally:
        other_ctx.close()


def test_class_demo_adds_requests_that_appear(page):
    _open(page, "KV cache & batching")
    _set_slider(page, "Demo requests", "6")
    # Long enough to still be running when it is cancelled below (6 x 32 tokens now finish in ~2 s).
    _set_slider(page, "Max tokens each", "256")
    page.click("#demo-start")
    page.wait_for_function("() => (document.querySelector('#demo-status')?.innerText || '').includes('Started 6')",
                           timeout=UI_TIMEOUT_MS)  # fmt: skip
    status = page.inner_text("#demo-status")
    first, last = (int(x) for x in status.split("(#")[1].split(")")[0].split("–#"))
    assert last - first == 5
    page.wait_for_function(
        f"() => [...document.querySelectorAll('#batch-requests tr[data-rid]')].filter(r => +r.dataset.rid >= {first}"
        f" && +r.dataset.rid <= {last} && r.innerText.includes('demo')).length === 6",
        timeout=UI_TIMEOUT_MS,
    )
    page.wait_for_function(
        "() => { const gd = document.querySelector('#batch-timeline .js-plotly-plot');"
        " return gd && gd._fullData.length > 3 && gd._fullData[3].y && Array.from(gd._fullData[2].y).some(y => String(y).includes('demo')); }",
        timeout=UI_TIMEOUT_MS,
    )
    time.sleep(2)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "batching.png"))
    page.click("#demo-cancel")
    page.wait_for_function("() => (document.querySelector('#demo-status')?.innerText || '').includes('Cancelled')",
                           timeout=UI_TIMEOUT_MS)  # fmt: skip
    assert "Traceback" not in page.content()


POOL_TITLE = "() => { const gd = document.querySelector('#pool-grid .js-plotly-plot');"
POOL_TITLE += " return gd && gd.layout && gd.layout.title ? gd.layout.title.text : ''; }"
HIT_RATE = "() => { const k = [...document.querySelectorAll('#pool-kpis .kpi')]"
HIT_RATE += (
    ".find(e => e.innerText.includes('hit rate')); return k ? parseFloat(k.querySelector('.kpi-v').innerText) : -1; }"
)


def test_shared_prefix_demo_shows_shared_blocks_in_the_grid(page):
    """The shared-prefix demo on the paged cache: while it runs, the block grid redraws, black blocks
    shared by several requests appear with their count, and the prefix hit rate goes above 0."""
    _open(page, "KV cache & batching")
    page.locator("#pool-grid .js-plotly-plot").wait_for(timeout=UI_TIMEOUT_MS)
    _set_slider(page, "Demo requests", "6")
    _set_slider(page, "Max tokens each", "128")
    first = page.evaluate(POOL_TITLE)
    page.click("#demo-shared")
    page.wait_for_function("() => (document.querySelector('#demo-status')?.innerText || '').includes('Shared-prefix')",
                           timeout=REPLY_TIMEOUT_MS)  # fmt: skip
    # Shared blocks: the grid's subtitle counts them ("N shared by several requests"), cells print the count.
    page.wait_for_function(f"() => /[1-9][0-9]* shared by/.test(({POOL_TITLE})())", timeout=REPLY_TIMEOUT_MS)
    shared_title = page.evaluate(POOL_TITLE)
    assert shared_title != first
    page.wait_for_function(f"() => ({HIT_RATE})() > 0", timeout=UI_TIMEOUT_MS)
    # ...and the grid keeps redrawing while the requests decode (blocks in use change as they grow).
    page.wait_for_function(f"() => ({POOL_TITLE})() !== {json.dumps(shared_title)}", timeout=REPLY_TIMEOUT_MS)
    page.locator("#pool-grid").first.scroll_into_view_if_needed()
    time.sleep(1)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "paged.png"))
    tables = page.inner_text("#pool-tables")
    assert "class" in tables, tables
    page.click("#demo-cancel")
    page.wait_for_function("() => (document.querySelector('#demo-status')?.innerText || '').includes('ancel')",
                           timeout=UI_TIMEOUT_MS)  # fmt: skip
    assert "Traceback" not in page.content()


def test_course_map_links_files_and_opens_tabs(page):
    _open(page, "Course map")
    page.locator("#course-map table").wait_for(timeout=UI_TIMEOUT_MS)
    rows = page.locator("#course-map tbody tr").count()
    assert rows == 16
    assert page.locator("#course-map tr.row-todo").count() >= 5
    href = page.locator("#course-map a").first.get_attribute("href")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "course.png"))
    r = page.request.get(page.url.rstrip("/") + "/" + href)
    assert r.status == 200 and "def " in r.text(), href
    page.click("#course-open-batching")
    page.locator("#batch-kpis .kpis").wait_for(state="visible", timeout=UI_TIMEOUT_MS)


# In-page watcher of the batching view (times from the page's own clock, Date.now() in ms: Playwright's
# round trips to a busy page would be counted otherwise): every 100 ms a sample [time, last step drawn in
# the timeline, live demo rows in the table, running KPI, chat input visible, prefill chunks in the last
# step drawn]; clicks on Start demo and on tabs are stamped.
WATCH = """() => {
  window.__samples = []; window.__clicks = {};
  document.addEventListener('click', (e) => {
    const t = e.target.closest('[role=tab], #demo-start');
    if (t) window.__clicks[t.id === 'demo-start' ? 'start' : t.innerText.trim()] = Date.now();
  }, true);
  setInterval(() => {
    const gd = document.querySelector('#batch-timeline .js-plotly-plot');
    const x = gd && gd._fullData && gd._fullData[0] ? gd._fullData[0].x : null;
    const rows = [...document.querySelectorAll('#batch-requests tr.live')]
      .filter(r => r.textContent.includes('demo')).length;
    const running = +(document.querySelector('#batch-kpis .kpi .kpi-v')?.textContent || 0);
    const chat = !!document.querySelector('#chat-input textarea')?.offsetParent;
    const pre = gd && gd._fullData && gd._fullData[1] ? gd._fullData[1].y : null;
    window.__samples.push([Date.now(), x && x.length ? +x[x.length - 1] : -1, rows, running, chat,
                           pre && pre.length ? +pre[pre.length - 1] : -1]);
  }, 100);
}"""
# Stamps of one chat reply in a page: click on Send, first token span, stats line.
ARM_REPLY = """() => {
  window.__sent = window.__first = window.__done = null;
  document.querySelector('#chat-send').addEventListener('click', () => { window.__sent = Date.now(); },
                                                          {capture: true, once: true});
  const obs = new MutationObserver(() => {
    if (window.__sent === null) return;
    if (!window.__first && document.querySelector('#chat-tokens .tok')) window.__first = Date.now();
    if (!window.__done && document.querySelector('#chat-stats .chat-stats-line')) window.__done = Date.now();
  });
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def _seconds_until(samples, after_ms: float, test) -> str:
    """Seconds from `after_ms` to the first sample at or after it that passes `test` ('n/a': none did)."""
    hit = next((s for s in samples if s[0] >= after_ms and test(s)), None)
    return "n/a" if hit is None else f"{(hit[0] - after_ms) / 1000:.2f}"


def test_page_stays_responsive_during_a_16_request_class_demo(browser, server, page):
    """While 16 demo requests run: another session's chat reply streams and finishes, the batching view
    keeps redrawing, and switching tabs answers. Prints the times (not asserted: the machine is shared).

    The chat is sent once every demo prompt is prefilled (the demo spends most of its life decoding; during
    its first seconds of prefill a new request waits its turn, first come first served)."""
    _open(page, "KV cache & batching")
    _set_slider(page, "Demo requests", "16")
    _set_slider(page, "Max tokens each", "160")  # still decoding when the tab switch below comes back
    page.evaluate(WATCH)
    page.click("#demo-start")
    # All 16 admitted at some point, and now a step without prefill: every demo prompt is prefilled (a
    # request that hit EOS early may have left already, so "16 decoding at once" is not required).
    page.wait_for_function(
        "() => window.__samples.some(s => s[3] >= 16) && window.__samples.at(-1)[5] === 0", timeout=UI_TIMEOUT_MS
    )
    other_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    other = other_ctx.new_page()
    other_ctx.set_default_timeout(UI_TIMEOUT_MS)
    try:
        other.goto(server)
        other.wait_for_selector("#chat-input textarea", timeout=UI_TIMEOUT_MS)
        other.evaluate(ARM_REPLY)
        # A greedy reply of a few dozen tokens (a 2-token one could end between two redraws of the view).
        _set_slider(other, "Temperature", "0")
        _send(other, "Count from one to twenty, in words.", "48")
        other.locator("#chat-stats .chat-stats-line").wait_for(timeout=REPLY_TIMEOUT_MS)
        other.wait_for_function("() => window.__done !== null", timeout=UI_TIMEOUT_MS)
        sent, first, done = other.evaluate("() => [window.__sent, window.__first, window.__done]")
        stats = other.inner_text("#chat-stats .chat-stats-line")
        assert "new tok" in stats and other.locator("#chat-tokens .tok").count() >= 1
        # Switching tabs in the watching page: the chat tab shows at once, the batching view redraws on return.
        _open(page, "Chat")
        page.wait_for_function("() => window.__samples.at(-1)[4]", timeout=UI_TIMEOUT_MS)
        _open(page, "KV cache & batching")
        page.wait_for_function(
            "() => { const c = window.__clicks; const before = window.__samples.filter(s => s[0] <= c['Chat']).at(-1);"
            " return window.__samples.some(s => s[0] >= c['KV cache & batching'] && s[1] > before[1]); }",
            timeout=UI_TIMEOUT_MS,
        )
        samples, clicks = page.evaluate("() => [window.__samples, window.__clicks]")
    finally:
        other_ctx.close()
        page.click("#demo-cancel")
    assert "Traceback" not in page.content()
    start = clicks["start"]
    during = [s for s in samples if sent <= s[0] <= done]
    redraws = [b[0] for a, b in zip(during, during[1:], strict=False) if b[1] != a[1]]
    edges = [sent, *redraws, done]
    gaps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    assert redraws, "the batching view did not redraw while the other session's reply ran"
    step_then = [s for s in samples if s[0] <= clicks["Chat"]][-1][1]
    print(
        f"\n[class demo, 16 requests] listed in the batching view {_seconds_until(samples, start, lambda s: s[2] >= 16)}"
        f" s after Start, all 16 prefilled and decoding after"
        f" {_seconds_until(samples, start, lambda s: s[3] >= 16 and s[5] == 0)} s; then another"
        f" session's chat: first token {(first - sent) / 1000:.2f} s, done {(done - sent) / 1000:.2f} s ({stats});"
        f" batching view redrew {len(redraws)} times meanwhile, largest gap {max(gaps) / 1000:.2f} s; tab switch"
        f" to Chat {_seconds_until(samples, clicks['Chat'], lambda s: s[4])} s; back on the batching tab, a newer"
        f" step drawn after {_seconds_until(samples, clicks['KV cache & batching'], lambda s: s[1] > step_then)} s"
    )
