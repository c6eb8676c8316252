"""Sampling: per-request params, the filters (pure functions), and the sampler that draws.

- `params.py`   SamplingParams (validated, frozen)
- `filters.py`  repetition penalty, temperature, top-k / top-p / min-p, the kept distribution
- `sampler.py`  Sampler (one request's seeded draws) and SampleRecord (what a draw publishes)
Logits processors (constrained decoding, penalties) join the pipeline here.
"""

from tiny_llm_playground.engine.sampling.filters import (
    Distribution,
    apply_repetition_penalty,
    descending_order,
    distribution,
    filter_masks,
    log_softmax,
    logsumexp,
    min_p_mask,
    top_indices,
    top_k_mask,
    top_p_mask,
)
from tiny_llm_playground.engine.sampling.params import SamplingParams
from tiny_llm_playground.engine.sampling.sampler import Sampler, SampleRecord

__all__ = [
    "Distribution",
    "SampleRecord",
    "Sampler",
    "SamplingParams",
    "apply_repetition_penalty",
    "descending_order",
    "distribution",
    "filter_masks",
    "log_softmax",
    "logsumexp",
    "min_p_mask",
    "top_indices",
    "top_k_mask",
    "top_p_mask",
]
