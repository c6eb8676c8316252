"""viz: pure functions that turn the engine's frozen observability records into Plotly figures or HTML.

Rules: no engine calls (only the engine's pure functions, such as the sampler's filters, so a picture
computes what the engine computes), no Gradio, no global state — data in, figure out — so every picture is
unit-testable (the figure holds the values it was given). The playground's tabs (app/tabs/) call these.
"""
