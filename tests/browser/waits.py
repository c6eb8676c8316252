"""How long browser tests wait, sized for the slowest machine CI may get (2 shared cores, another job
beside it: a click on a busy Gradio page took over 30 s there). A wait returns as soon as its condition
holds, so a long limit only makes a real failure slower to report, never a pass flaky."""

UI_TIMEOUT_MS = 120_000  # any click, fill or wait for the page to show something
REPLY_TIMEOUT_MS = 300_000  # a whole reply from the real model, or an inspection of it
