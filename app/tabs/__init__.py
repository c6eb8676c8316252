"""One module per playground tab; each has `build(engine)` that creates its components, then wires them."""
