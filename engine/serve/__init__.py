"""Serving: requests in, events out, many at once (continuous batching).

- `config.py`        EngineConfig (validated; separate from per-request SamplingParams)
- `sequence.py`      Sequence: one request's tokens, sampler, status, the finishing rules
- `scheduler.py`     which sequences run each step, and with how many tokens (pure policy, integers)
- `model_runner.py`  the step's forwards: batched decode, prefill chunks, each row's cache view
- `engine_core.py`   EngineCore: the synchronous step (schedule -> run -> sample -> free)
- `engine.py`        Engine: the engine thread, `submit()` -> RequestHandle event streams, `snapshot()`
- `snapshot.py`      the frozen state after each step
"""
