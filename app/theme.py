"""The playground's look: one theme and one stylesheet shared by every tab.

Made for a projector at the back of a room: large type, high contrast, no thin grey text.
Accent colours come from the Okabe–Ito palette, which stays distinguishable under the common forms of
colour blindness: blue for actions, vermillion for Stop, orange for highlights. Fonts are local or
system fonts only (a GoogleFont would make the page fetch from a CDN, and the playground runs offline).
"""

from __future__ import annotations

import gradio as gr

# Okabe–Ito palette (https://jfly.uni-koeln.de/color/): safe for deuteranopia, protanopia, tritanopia.
BLUE = "#0072B2"
SKY = "#56B4E9"
ORANGE = "#E69F00"
VERMILLION = "#D55E00"
GREEN = "#009E73"
INK = "#1a1a1a"

THEME = gr.themes.Default(
    primary_hue=gr.themes.colors.blue,
    secondary_hue=gr.themes.colors.orange,
    neutral_hue=gr.themes.colors.slate,
    text_size=gr.themes.sizes.text_lg,
    spacing_size=gr.themes.sizes.spacing_md,
    radius_size=gr.themes.sizes.radius_md,
    font=["IBM Plex Sans", "DejaVu Sans", "system-ui", "sans-serif"],
    font_mono=["IBM Plex Mono", "DejaVu Sans Mono", "ui-monospace", "monospace"],
).set(
    body_text_color=INK,
    body_text_color_subdued="#3a3a3a",
    block_label_text_color=INK,
    block_label_text_size="*text_md",
    block_title_text_color=INK,
    block_title_text_weight="600",
    button_large_text_size="*text_lg",
    button_primary_background_fill=BLUE,
    button_primary_background_fill_hover="#005a8c",
    button_primary_text_color="white",
    button_cancel_background_fill=VERMILLION,
    button_cancel_background_fill_hover="#b34f00",
    button_cancel_text_color="white",
    slider_color=BLUE,
    checkbox_background_color_selected=BLUE,
    color_accent=BLUE,
    color_accent_soft="#e3f1fa",
    link_text_color=BLUE,
)

CSS = f"""
.gradio-container {{ max-width: 1600px !important; margin: 0 auto; }}
#app-header {{ display: flex; align-items: baseline; gap: 0.4rem 1.25rem; flex-wrap: wrap;
    padding: 0 0.25rem 0.4rem; border-bottom: 4px solid {BLUE}; margin-bottom: 0.25rem; }}
#app-header h1 {{ font-size: 2.1rem; margin: 0; color: {INK}; }}
#app-header .model {{ font-size: 1.15rem; font-weight: 600; color: white; background: {BLUE};
    padding: 0.15rem 0.7rem; border-radius: 0.4rem; }}
#app-header .tagline {{ font-size: 1.15rem; color: #333; }}
.tab-nav button, button[role="tab"] {{ font-size: 1.2rem !important; font-weight: 600; }}
#chat-box .message, #chat-box .message * {{ font-size: 1.2rem; line-height: 1.5; }}
#chat-box pre, #chat-box code {{ font-size: 1.05rem; }}
#chat-stats {{ font-size: 1.1rem; min-height: 1.6rem; }}
#chat-stats .chat-stats-line {{ font-variant-numeric: tabular-nums; background: #f3f6f9;
    padding: 0.3rem 0.6rem; border-left: 5px solid {GREEN}; border-radius: 0.25rem; }}
#chat-stats .chat-error {{ background: #fff4e5; padding: 0.3rem 0.6rem; border-left: 5px solid {VERMILLION};
    border-radius: 0.25rem; color: {INK}; }}
#chat-stats .chat-busy {{ color: #333; }}
#chat-controls input[data-testid="number-input"] {{ width: 4.8rem; max-width: 4.8rem; text-align: right; }}
#sampling-hint .hint {{ font-size: 1rem; color: #333; padding: 0 0.25rem; }}
.hint {{ font-size: 1rem; color: #333; padding: 0 0.25rem; }}
.inspect-ok, .inspect-error {{ font-size: 1.1rem; padding: 0.3rem 0.6rem; border-radius: 0.25rem;
    color: {INK}; }}
.inspect-ok {{ background: #f3f6f9; border-left: 5px solid {GREEN}; }}
.inspect-error {{ background: #fff4e5; border-left: 5px solid {VERMILLION}; }}
#inspect-prompt textarea {{ font-family: "IBM Plex Mono", "DejaVu Sans Mono", monospace;
    font-size: 1.05rem; }}
#chat-tokens .tok-view {{ border: 1px solid #d0d7de; border-radius: 0.4rem; padding: 0.5rem 0.6rem;
    background: #fafbfc; }}
#chat-tokens .tok-text {{ font-family: "IBM Plex Mono", "DejaVu Sans Mono", monospace; font-size: 1.05rem;
    line-height: 1.9; white-space: pre-wrap; word-break: break-word; }}
#chat-tokens .tok {{ cursor: pointer; padding: 0.08rem 0.05rem; margin: 0 1px; border-radius: 0.2rem; }}
#chat-tokens .tok:hover {{ outline: 2px solid {INK}; }}
#chat-tokens .tok.sel {{ outline: 3px solid {VERMILLION}; outline-offset: 1px; }}
#chat-tokens .tok-empty {{ color: #444; font-family: "IBM Plex Sans", "DejaVu Sans", sans-serif; }}
.tok-legend {{ margin-top: 0.4rem; font-size: 0.95rem; color: #333; }}
.tok-swatch {{ display: inline-block; min-width: 1.8rem; text-align: center; font-size: 0.85rem;
    padding: 0 0.15rem; }}
.tok-note {{ font-size: 0.95rem; color: #333; margin-top: 0.2rem; }}
.kpis {{ display: flex; gap: 0.5rem; flex-wrap: wrap; }}
.kpi {{ border-left: 6px solid; background: #f3f6f9; padding: 0.3rem 0.9rem; border-radius: 0.3rem;
    min-width: 6.5rem; }}
.kpi-v {{ font-size: 1.8rem; font-weight: 700; font-variant-numeric: tabular-nums; color: {INK}; }}
.kpi-k {{ font-size: 0.95rem; color: #333; }}
#demo-status {{ margin-top: 0.5rem; }}
.demo-title {{ font-size: 1.15rem; font-weight: 600; padding: 0.4rem 0.6rem 0; color: {INK}; }}
.req-table, .course-table {{ border-collapse: collapse; width: 100%; font-size: 1.02rem; }}
.req-table th, .req-table td, .course-table th, .course-table td {{ padding: 0.25rem 0.5rem;
    border-bottom: 1px solid #d0d7de; text-align: left; vertical-align: top; }}
.req-table td, .req-table th {{ font-variant-numeric: tabular-nums; white-space: nowrap; }}
.req-table tr.done td {{ color: #444; }}
.req-table .dot {{ display: inline-block; width: 0.75rem; height: 0.75rem; border-radius: 50%;
    margin-right: 0.35rem; }}
.course-table tr.row-todo td {{ color: #555; background: #f6f6f6; }}
.course-table .built {{ color: white; background: {GREEN}; padding: 0.05rem 0.45rem; border-radius: 0.3rem; }}
.course-table .todo {{ color: {INK}; background: #e8e8e8; padding: 0.05rem 0.45rem; border-radius: 0.3rem;
    border: 1px dashed #777; }}
.course-table .tab-ref {{ font-weight: 600; color: {BLUE}; }}
.course-table code {{ font-size: 0.95rem; }}
.course-note {{ font-size: 0.92rem; color: #444; }}
#attn-overview .ov {{ padding: 0.2rem 0.1rem; }}
#attn-overview .ov-title {{ font-size: 1.15rem; font-weight: 600; color: {INK}; margin-bottom: 0.2rem; }}
#attn-overview .ov-sub {{ display: block; font-size: 0.95rem; font-weight: 400; color: #333; }}
#attn-overview .ov-grid {{ border-collapse: separate; border-spacing: 2px; margin: 0; width: auto;
    border: none !important; }}
#attn-overview .ov-grid th, #attn-overview .ov-grid td, #attn-overview .ov-grid tr {{ border: none !important;
    background-color: transparent; }}
#attn-overview .ov-grid td {{ width: 1.45rem; min-width: 1.45rem; height: 1rem; padding: 0 !important; cursor: pointer;
    border-radius: 2px; }}
#attn-overview .ov-grid td:hover {{ outline: 2px solid {INK}; }}
#attn-overview .ov-grid td.sel {{ outline: 3px solid {VERMILLION}; outline-offset: 1px; }}
#attn-overview .ov-grid th {{ font-size: 0.8rem; font-weight: 500; color: #333; padding: 0 0.3rem !important;
    text-align: right; font-variant-numeric: tabular-nums; line-height: 1; }}
#attn-overview .ov-grid thead th {{ text-align: center; }}
#attn-overview .ov-grid th.ov-corner {{ font-size: 0.75rem; white-space: nowrap; }}
#attn-overview .ov-legend {{ display: flex; align-items: center; gap: 0.4rem; font-size: 0.9rem; color: #333;
    margin-top: 0.3rem; font-variant-numeric: tabular-nums; }}
#attn-overview .ov-bar {{ display: inline-block; width: 12rem; height: 0.8rem; border-radius: 2px; }}
"""
