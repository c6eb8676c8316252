"""The Attention, RoPE and Logit-lens tabs in a real browser on the real model (fixtures: conftest.py).

One Inspect on the Attention tab feeds all three tabs; each plot must be a rendered plotly figure holding
data of the right shape; clicking a cell of the layers x heads grid shows that head. Saves the screenshots used in the docs (1280x800).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.waits import REPLY_TIMEOUT_MS, UI_TIMEOUT_MS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "assets" / "screenshots"
PROMPT = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"

# The plotly graph div inside a gr.Plot keeps the figure's traces in `.data` (numpy arrays arrive base64
# encoded; `_fullData` holds them decoded).
PLOT_INFO = """(id) => {
  const gd = document.querySelector(`#${id} .js-plotly-plot`);
  if (!gd || !gd.data || !gd.data.length) return null;
  const t = (gd._fullData && gd._fullData.length) ? gd._fullData[0] : gd.data[0];  // decoded arrays
  const n = (a) => a ? (a.length !== undefined ? a.length : parseInt(String(a.shape || '0').split(',')[0])) : 0;
  return {type: t.type, rows: t.z ? n(t.z) : n(t.y),
          title: gd.layout && gd.layout.title ? gd.layout.title.text : ''};
}"""


def plot_info(pg, elem_id: str, timeout_ms: int = UI_TIMEOUT_MS, contains: str = "") -> dict:
    pg.wait_for_function(
        f"() => {{ const r = ({PLOT_INFO})('{elem_id}'); return r && r.rows > 0 && r.title.includes({contains!r}); }}",
        timeout=timeout_ms,
    )
    return pg.evaluate(PLOT_INFO, elem_id)


def open_tab(pg, name: str) -> None:
    pg.get_by_role("tab", name=name).click()


def shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / name))


def test_inspect_renders_attention_rope_and_lens(page):
    open_tab(page, "Attention")
    page.fill("#inspect-prompt textarea", PROMPT)
    page.click("#inspect-run")
    page.wait_for_function(
        "() => (document.querySelector('#inspect-status')?.innerText || '').includes('Inspected ')",
        timeout=REPLY_TIMEOUT_MS,
    )
    status = page.inner_text("#inspect-status")
    n_tokens = int(status.split("Inspected ")[1].split(" tokens")[0])
    assert 10 <= n_tokens <= 40, status
    assert "24 layers × 14 heads" in status and "2 K/V heads" in status

    heat = plot_info(page, "attn-heatmap", contains="Attention")
    assert heat["type"] == "heatmap" and heat["rows"] == n_tokens
    assert page.locator("#attn-overview .ov-grid tbody tr").count() == 24
    assert page.locator("#attn-overview td[data-l]").count() == 24 * 14
    gqa = plot_info(page, "attn-gqa")
    assert "14 query heads share 2" in gqa["title"]
    page.locator("#attn-heatmap").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "attention.png")

    # a different head redraws the heatmap: from the Head box, and by clicking a cell of the overview
    box = page.locator('#attn-head input[type="number"]')
    box.fill("5")
    box.press("Enter")
    plot_info(page, "attn-heatmap", contains="head 5")
    page.locator('#attn-overview td[data-l="3"][data-h="7"]').click()
    plot_info(page, "attn-heatmap", contains="layer 3 · head 7")
    page.wait_for_selector('#attn-overview td.sel[data-l="3"][data-h="7"]', timeout=UI_TIMEOUT_MS)
    assert page.input_value('#attn-layer input[type="number"]') == "3"
    assert page.input_value('#attn-head input[type="number"]') == "7"
    page.locator("#attn-overview .ov-legend").scroll_into_view_if_needed()
    page.evaluate("window.scrollBy(0, 60)")
    page.mouse.move(5, 5)  # no hover outline in the picture
    shot(page, "attention_overview.png")

    open_tab(page, "RoPE")
    pairs = plot_info(page, "rope-pairs", timeout_ms=UI_TIMEOUT_MS)
    assert pairs["rows"] > 0
    rel = plot_info(page, "rope-relative")
    assert rel["rows"] == 513  # distances 0..512
    spectrum = plot_info(page, "rope-spectrum")
    assert spectrum["rows"] == 32  # head_dim 64 -> 32 pairs
    assert plot_info(page, "rope-angles")["rows"] == n_tokens
    shot(page, "rope.png")

    open_tab(page, "Logit lens")
    lens = plot_info(page, "lens-table", contains="Logit lens")
    assert lens["type"] == "heatmap" and lens["rows"] == 24
    shot(page, "lens.png")

    # moving the window recomputes the lens on the engine thread
    box = page.locator('#lens-start input[type="number"]')
    box.fill("0")
    box.press("Enter")
    page.wait_for_function(
        "() => { const gd = document.querySelector('#lens-table .js-plotly-plot');"
        " return gd && gd._fullData && String(gd._fullData[0].x[0]).startsWith('0:'); }",
        timeout=REPLY_TIMEOUT_MS,
    )

    assert "Traceback" not in page.content()
    assert page.outside_requests == [], f"the page fetched from outside the server: {page.outside_requests}"


def test_empty_and_too_long_prompts_give_a_notice(page):
    open_tab(page, "Attention")
    page.fill("#inspect-prompt textarea", "  ")
    page.click("#inspect-run")
    page.wait_for_selector("#inspect-status .inspect-error:has-text('empty')", timeout=UI_TIMEOUT_MS)
    page.fill("#inspect-prompt textarea", "x = 1\n" * 400)
    page.click("#inspect-run")
    page.wait_for_selector("#inspect-status .inspect-error:has-text('limited to 512')", timeout=UI_TIMEOUT_MS)
    assert "Traceback" not in page.content()
