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
"""
