"""Pure arithmetic of the benchmark: medians and percentiles, ratios, the no-cache estimate, target checks.

No timing happens here, so every number the report prints can be recomputed (and is tested) from the raw
figures in its JSON.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

GB = 1e9  # the RSS target is in decimal gigabytes


def median(xs: Iterable[float]) -> float | None:
    return percentile(xs, 50)


def percentile(xs: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default);
    None for no data."""
    v = sorted(float(x) for x in xs)
    if not v:
        return None
    pos = (len(v) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two greedy outputs share (a peer on other weights drifts apart at some point)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def rss_bytes(ru_maxrss: int, platform: str = sys.platform) -> int:
    """`resource.getrusage(...).ru_maxrss` in bytes: Linux reports KiB, macOS bytes."""
    return ru_maxrss if platform == "darwin" else ru_maxrss * 1024


# ----- the week-1 no-cache path: measured in part, extrapolated to every token of every request -----


@dataclass(frozen=True)
class NoCacheEstimate:
    """Time of the no-cache path to serve `requests` requests one by one, `gen` tokens each.

    The no-cache path runs a full forward over the whole sequence for every new token: token i of a
    request with a P-token prompt costs one forward over P + i tokens. Timing all of that is slow, so a few
    (length, seconds) points are measured and a line t(L) = a + b·L is fitted; the estimate is
    requests · Σ_{i<gen} t(P + i). `estimated` is False only when every step of every request was timed."""

    requests: int
    gen: int
    prompt_len: int
    timed_requests: int
    timed_steps: int  # forwards timed in all (including probes)
    intercept_s: float  # a
    slope_s_per_token: float  # b
    per_request_s: float
    total_s: float
    total_tps: float
    estimated: bool
    method: str = field(default="", compare=False)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b·x with b clamped at >= 0 (a forward over more tokens never takes
    less time; a negative slope is noise, and then the mean is the better guess)."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("fit_line needs as many x as y values, at least one")
    n = len(xs)
    mx_, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx_) ** 2 for x in xs)
    b = sum((x - mx_) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    if b < 0:
        b = 0.0
    return my - b * mx_, b


def extrapolate_no_cache(
    lengths: Sequence[int],
    seconds: Sequence[float],
    *,
    prompt_len: int,
    gen: int,
    requests: int,
    timed_requests: int,
) -> NoCacheEstimate:
    """Estimate the no-cache time for `requests` requests of `gen` tokens from timed forwards.

    lengths[k], seconds[k]: one timed no-cache step (a forward over lengths[k] tokens, sampling included).
    When the timed steps are exactly every step of every request (timed_requests == requests and the
    lengths are P..P+gen-1 once per request), the total is their plain sum; otherwise the fitted line."""
    if prompt_len < 1 or gen < 1 or requests < 1:
        raise ValueError("prompt_len, gen and requests must be >= 1")
    a, b = fit_line([float(x) for x in lengths], [float(s) for s in seconds])
    if a + b * prompt_len <= 0:  # noise tilted the line below zero where the steps start: take the mean
        a, b = sum(seconds) / len(seconds), 0.0
    steps = [prompt_len + i for i in range(gen)]
    complete = timed_requests == requests and sorted(lengths) == sorted(steps * requests)
    if complete:
        total = float(sum(seconds))
        method = f"measured: all {gen} tokens of all {requests} requests timed"
    else:
        total = requests * (gen * a + b * sum(steps))
        method = (
            f"estimated: {len(lengths)} no-cache forwards timed (lengths {min(lengths)}..{max(lengths)}) on"
            f" {timed_requests} of {requests} requests; line t(L) = {a * 1e3:.2f} ms + {b * 1e3:.4f} ms/token"
            f" x L summed over L = {steps[0]}..{steps[-1]} for each request"
        )
    per_request = total / requests
    return NoCacheEstimate(
        requests=requests,
        gen=gen,
        prompt_len=prompt_len,
        timed_requests=timed_requests,
        timed_steps=len(lengths),
        intercept_s=a,
        slope_s_per_token=b,
        per_request_s=per_request,
        total_s=total,
        total_tps=requests * gen / total if total > 0 else 0.0,
        estimated=not complete,
        method=method,
    )


# ----- ratios and the targets -----


@dataclass(frozen=True)
class Figures:
    """The medians a report's ratios and checks are computed from (tok/s unless named otherwise)."""

    prefill_tps: float
    decode_tps: float
    levels: dict[int, float]  # N concurrent requests -> total throughput
    peak_rss_bytes: int
    prompt_len: int
    no_cache_tps: float | None = None
    no_cache_requests: int | None = None  # how many requests the no-cache figure serves
    contended_decode_tps: float | None = None
    peer: str = "none"
    peer_prefill_tps: float | None = None
    peer_decode_tps: float | None = None
    peer_contended_decode_tps: float | None = None


def compute_ratios(f: Figures) -> dict[str, float | None]:
    """Every ratio the report prints; None where a figure is missing."""
    out: dict[str, float | None] = {
        "decode_vs_peer": ratio(f.decode_tps, f.peer_decode_tps),
        "prefill_vs_peer": ratio(f.prefill_tps, f.peer_prefill_tps),
        "contended_vs_quiet_decode": ratio(f.contended_decode_tps, f.decode_tps),
        "peer_contended_vs_quiet_decode": ratio(f.peer_contended_decode_tps, f.peer_decode_tps),
    }
    for n, tps in sorted(f.levels.items()):
        out[f"concurrent_{n}_vs_single_decode"] = ratio(tps, f.decode_tps)
    n = f.no_cache_requests
    out["concurrent_vs_no_cache"] = ratio(f.levels.get(n), f.no_cache_tps) if n is not None else None
    return out


@dataclass(frozen=True)
class Check:
    """One target from the issue: `passed` is None when this run cannot say (the note tells why)."""

    name: str
    target: str
    value: float | None
    passed: bool | None
    note: str = ""


def _at_least(name: str, value: float | None, bound: float, why_na: str | None) -> Check:
    target = f">= {bound:g}x"
    if why_na is not None:
        return Check(name, target, value, None, why_na)
    if value is None:
        return Check(name, target, None, None, "not measured")
    return Check(name, target, value, value >= bound)


def target_checks(f: Figures, r: dict[str, float | None] | None = None) -> list[Check]:
    """The issue's targets, each marked yes / no / n/a for this run."""
    r = compute_ratios(f) if r is None else r
    llama = None if f.peer == "llama.cpp" else "needs --peer llama.cpp"
    prefill_na = llama or (None if f.prompt_len >= 512 else "needs --prompt-len 512")
    has16 = None if 16 in f.levels else "needs 16 in --requests"
    rss_gb = f.peak_rss_bytes / GB
    return [
        _at_least("decode vs llama.cpp", r["decode_vs_peer"], 0.8, llama),
        _at_least(f"prefill-{f.prompt_len} vs llama.cpp", r["prefill_vs_peer"], 0.5, prefill_na),
        _at_least("decode vs mlx-lm", r["decode_vs_peer"], 10.0, None if f.peer == "mlx-lm" else "needs --peer mlx-lm"),
        _at_least("16 concurrent total vs single-stream decode", r.get("concurrent_16_vs_single_decode"), 4.0, has16),
        _at_least(
            "16 concurrent total vs no-cache, one by one",
            r["concurrent_vs_no_cache"],
            50.0,
            has16 or (None if f.no_cache_requests == 16 else "the no-cache figure is not for 16 requests"),
        ),
        Check("peak RSS (GB)", "< 1.5", rss_gb, rss_gb < 1.5),
        _at_least(
            "decode under contention vs quiet",
            r["contended_vs_quiet_decode"],
            0.4,
            None if f.contended_decode_tps is not None else "needs --contend",
        ),
    ]


# ----- the paged KV cache's targets -----


def kv_checks(res: dict) -> list[Check]:
    """The paged cache's targets that this run measured (engine/bench/run.py's result object)."""
    out: list[Check] = []
    r = res.get("ratios", {})
    if "dense" in res:
        out.append(_at_least("paged decode vs dense", r.get("paged_vs_dense_decode"), 0.95, None))
        out.append(_at_least("paged 16 concurrent vs dense", r.get("paged_vs_dense_concurrent_16"), 0.95,
                             None if "paged_vs_dense_concurrent_16" in r else "needs 16 in --requests"))  # fmt: skip
        same = all(d.get("same_tokens_as_paged") for d in res["dense"]["levels"])
        out.append(Check("paged outputs equal dense, every level", "identical", float(same), same))
    capped = res.get("capped")
    if capped:
        same = all(lv["identical_to_uncapped"] for lv in capped["levels"])
        pre = sum(lv["preemptions"] for lv in capped["levels"])
        if capped.get("batch_invariant"):
            out.append(Check("capped pool: outputs equal the uncapped run", "identical", float(same), same))
        else:  # the batch mix differs between the runs, and with it the rounding of the fast kernels
            agree = [n for lv in capped["levels"] for n in lv["agreeing_tokens"]]
            whole = sum(n == capped["gen"] for n in agree)
            note = f"needs --batch-invariant; here {whole} of {len(agree)} agree on every token"
            out.append(Check("capped pool: outputs equal the uncapped run", "identical", float(same), None, note))
        out.append(Check("capped pool: preemptions", "> 0", float(pre), pre > 0))
        out.append(Check("capped pool: whole again afterwards", "yes", float(capped["pool_full_after"]),
                         capped["pool_full_after"]))  # fmt: skip
    kv_runs = [("", res["engine"]["kv"])] if "engine" in res and res["engine"].get("kv", {}).get("block_bytes") else []
    shared = res.get("shared_prefix")
    if shared:
        on, off = shared["prefix_cache"], shared["no_prefix_cache"]
        least = min(on["cached_prompt_tokens"][1:])
        out.append(Check("shared prefix: cached prompt tokens of the requests after the first",
                         f">= {shared['system_tokens']}", float(least), least >= shared["system_tokens"]))  # fmt: skip
        out.append(_at_least("shared prefix: cached TTFT speed-up vs no prefix cache",
                             ratio(off["cached_ttft_median_s"], on["cached_ttft_median_s"]), 5.0, None))  # fmt: skip
        out.append(_at_least("shared prefix: total throughput vs no prefix cache",
                             ratio(on["total_tps"], off["total_tps"]), 2.0, None))  # fmt: skip
        out.append(Check("shared prefix: same outputs with and without the prefix cache", "identical",
                         float(shared["same_outputs"]), shared["same_outputs"]))  # fmt: skip
        kv_runs = [(f", prefix cache {k}", s["kv"]) for k, s in (("on", on), ("off", off)) if s.get("kv")]
    for label, kvs in kv_runs:
        # The pool's memory (every block ever written) against the tokens it kept at its peak, with the slack
        # of one partly filled block per sequence.
        bound = 1.05 * kvs["peak_cached_bytes"] + res.get("max_batch", 16) * kvs["block_bytes"]
        value = kvs["peak_allocated_bytes"] / bound if bound else None
        out.append(Check(f"peak KV bytes allocated / (1.05 x bytes of the tokens cached + a block per sequence){label}",
                         "<= 1", value, value is not None and value <= 1))  # fmt: skip
    return out
