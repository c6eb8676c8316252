"""`python -m engine bench`: end to end on the tiny random model, the arithmetic behind every ratio and
check, the no-cache extrapolation, the peer plumbing, and bad input. No timing is ever asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_llm_playground.engine.bench import peers as peers_mod
from tiny_llm_playground.engine.bench.peers import BusyCore, PeerCrashed, start_peer
from tiny_llm_playground.engine.bench.prompts import STRIDE, bench_prompts, ids_sha256
from tiny_llm_playground.engine.bench.run import parse_requests
from tiny_llm_playground.engine.bench.stats import (
    Figures,
    common_prefix,
    compute_ratios,
    extrapolate_no_cache,
    fit_line,
    median,
    percentile,
    rss_bytes,
    target_checks,
)
from tiny_llm_playground.engine.cli import main

TINY = ["--prompt-len", "12", "--gen", "4", "--reps", "1", "--no-cache-tokens", "2"]


def bench(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["bench", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----- end to end on the tiny model -----


def test_bench_runs_end_to_end_and_the_json_has_every_field(tiny_model_dir, tmp_path, capsys):
    out_file = tmp_path / "b" / "bench.json"
    rc, out, err = bench(
        capsys,
        "--model",
        str(tiny_model_dir),
        *TINY,
        "--requests",
        "1,2",
        "--contend",
        "--json",
        "--out",
        str(out_file),
    )
    assert rc == 0, err
    res = json.loads(out)
    assert json.loads(out_file.read_text()) == res
    assert res["prompt_len"] == 12 and res["gen"] == 4 and res["requests"] == [1, 2] and res["peer"] is None
    assert len(res["prompt"]["request0_ids"]) == 12
    assert res["prompt"]["request0_sha256"] == ids_sha256(res["prompt"]["request0_ids"])
    eng = res["engine"]
    assert eng["single"]["prefill_tps"] > 0 and eng["single"]["decode_tps"] > 0
    assert len(eng["single"]["runs"]) == 1
    assert [lv["n"] for lv in eng["levels"]] == [1, 2]
    for lv in eng["levels"]:
        assert lv["tokens"] == 4 * lv["n"], "EOS must not end a benchmark request"
        assert len(lv["ttft_s"]) == lv["n"] and lv["ttft_p90_s"] >= lv["ttft_median_s"]
        assert lv["total_tps"] == pytest.approx(lv["tokens"] / lv["wall_s"])
    nc = eng["no_cache"]
    assert nc["estimated"] is True and "estimated" in nc["method"]
    assert (nc["requests"], nc["gen"], nc["timed_requests"], nc["timed_steps"]) == (2, 4, 1, 3)  # 2 steps + probe
    assert eng["contention"]["gen"] == 4 and eng["contention"]["decode_tps"] > 0
    assert eng["peak_rss_bytes"] > 10_000_000
    r = res["ratios"]
    assert r["contended_vs_quiet_decode"] == pytest.approx(
        eng["contention"]["decode_tps"] / eng["single"]["decode_tps"]
    )
    assert r["concurrent_2_vs_single_decode"] == pytest.approx(
        eng["levels"][1]["total_tps"] / eng["single"]["decode_tps"]
    )
    assert r["concurrent_vs_no_cache"] == pytest.approx(eng["levels"][1]["total_tps"] / nc["total_tps"])
    assert r["decode_vs_peer"] is None
    checks = {c["name"]: c for c in res["checks"]}
    rss = checks["peak RSS (GB)"]  # the pytest process's own peak: other tests may have pushed it up
    assert rss["value"] == pytest.approx(eng["peak_rss_bytes"] / 1e9) and rss["passed"] is (rss["value"] < 1.5)
    assert checks["decode vs llama.cpp"]["passed"] is None  # no peer: n/a
    assert checks["decode under contention vs quiet"]["passed"] is not None
    assert "loading" in err and "no-cache path" in err  # progress goes to stderr


def test_the_table_names_figures_ratios_and_targets(tiny_model_dir, capsys):
    rc, out, _ = bench(capsys, "--model", str(tiny_model_dir), *TINY, "--requests", "2")
    assert rc == 0
    for text in ("single stream", "prefill tok/s", "decode tok/s", "concurrent requests", "ESTIMATED", "peak RSS",
                 "targets:", "[n/a] decode vs llama.cpp"):  # fmt: skip
        assert text in out


@pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="mlx-lm is not installed")
def test_mlx_lm_peer_runs_on_the_same_ids_in_a_child_process(tiny_model_dir, capsys):
    rc, out, err = bench(capsys, "--model", str(tiny_model_dir), *TINY, "--requests", "1", "--peer", "mlx-lm", "--json")
    assert rc == 0, err
    res = json.loads(out)
    peer = res["peer"]
    assert peer["name"] == "mlx-lm" and peer["gen"] == 4
    run = peer["single"]["runs"][0]
    assert run["tokens"] == 4 and run["prefill_tps"] > 0 and run["decode_tps"] > 0
    assert 0 <= run["agree_prefix"] <= 4
    assert peer["peak_rss_bytes"] > 0
    assert res["ratios"]["decode_vs_peer"] == pytest.approx(res["engine"]["single"]["decode_tps"] / run["decode_tps"])
    assert {c["name"]: c for c in res["checks"]}["decode vs mlx-lm"]["passed"] is not None


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llama_cpp_peer_runs_the_tiny_gguf(tiny_model_dir, capsys):
    gguf = tiny_model_dir.parent / "tiny.gguf"
    rc, out, err = bench(capsys, "--model", str(tiny_model_dir), *TINY, "--requests", "1", "--peer", "llama.cpp",
                         "--peer-gguf", str(gguf), "--json")  # fmt: skip
    assert rc == 0, err
    peer = json.loads(out)["peer"]
    assert peer["name"] == "llama.cpp" and peer["gguf"] == str(gguf)
    assert peer["single"]["runs"][0]["tokens"] == 4


# ----- prompts -----


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def test_prompts_are_deterministic_windows_of_one_token_stream():
    a = bench_prompts(ByteTokenizer(), 3, 50)
    assert a == bench_prompts(ByteTokenizer(), 3, 50)
    assert [len(p) for p in a] == [50, 50, 50]
    assert a[1][: 50 - STRIDE] == a[0][STRIDE:], "request 1 starts STRIDE tokens after request 0"
    assert len({tuple(p) for p in a}) == 3
    long = bench_prompts(ByteTokenizer(), 1, 20_000)[0]  # longer than the snippet: it repeats
    assert len(long) == 20_000


# ----- pure arithmetic -----


def test_median_and_percentile_interpolate_like_numpy():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert median(xs) == 2.5
    assert percentile(xs, 90) == pytest.approx(3.7)  # rank 2.7 between 3 and 4
    assert percentile([5.0], 90) == 5.0
    assert median([]) is None


def test_rss_is_kib_on_linux_and_bytes_on_macos():
    assert rss_bytes(1000, "linux") == 1_024_000
    assert rss_bytes(1000, "darwin") == 1000


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_ratios_from_given_figures():
    f = Figures(
        prefill_tps=250.0, decode_tps=20.0, levels={1: 19.0, 16: 120.0}, peak_rss_bytes=900_000_000,
        prompt_len=512, no_cache_tps=1.5, no_cache_requests=16, contended_decode_tps=9.0, peer="llama.cpp",
        peer_prefill_tps=200.0, peer_decode_tps=25.0, peer_contended_decode_tps=1.0,
    )  # fmt: skip
    r = compute_ratios(f)
    assert r["decode_vs_peer"] == pytest.approx(0.8)
    assert r["prefill_vs_peer"] == pytest.approx(1.25)
    assert r["concurrent_1_vs_single_decode"] == pytest.approx(0.95)
    assert r["concurrent_16_vs_single_decode"] == pytest.approx(6.0)
    assert r["concurrent_vs_no_cache"] == pytest.approx(80.0)
    assert r["contended_vs_quiet_decode"] == pytest.approx(0.45)
    assert r["peer_contended_vs_quiet_decode"] == pytest.approx(0.04)
    checks = {c.name: c for c in target_checks(f, r)}
    assert checks["decode vs llama.cpp"].passed is True  # exactly 0.8 meets ">= 0.8"
    assert checks["prefill-512 vs llama.cpp"].passed is True
    assert checks["decode vs mlx-lm"].passed is None
    assert checks["16 concurrent total vs single-stream decode"].passed is True
    assert checks["16 concurrent total vs no-cache, one by one"].passed is True
    assert checks["peak RSS (GB)"].value == pytest.approx(0.9) and checks["peak RSS (GB)"].passed is True
    assert checks["decode under contention vs quiet"].passed is True


def test_checks_fail_below_their_targets_and_are_na_without_the_figures():
    f = Figures(
        prefill_tps=50.0, decode_tps=10.0, levels={16: 30.0}, peak_rss_bytes=1_600_000_000, prompt_len=128,
        no_cache_tps=1.0, no_cache_requests=16, contended_decode_tps=3.0, peer="mlx-lm", peer_decode_tps=2.0,
    )  # fmt: skip
    checks = {c.name: c for c in target_checks(f)}
    assert checks["decode vs mlx-lm"].passed is False  # 5x < 10x
    assert checks["16 concurrent total vs single-stream decode"].passed is False  # 3x < 4x
    assert checks["16 concurrent total vs no-cache, one by one"].passed is False  # 30x < 50x
    assert checks["peak RSS (GB)"].passed is False
    assert checks["decode under contention vs quiet"].passed is False  # 0.3x
    assert checks["decode vs llama.cpp"].passed is None and "llama.cpp" in checks["decode vs llama.cpp"].note
    quiet = Figures(prefill_tps=1.0, decode_tps=1.0, levels={4: 2.0}, peak_rss_bytes=1, prompt_len=128)
    na = {c.name: c for c in target_checks(quiet)}
    assert na["16 concurrent total vs single-stream decode"].passed is None
    assert na["decode under contention vs quiet"].note == "needs --contend"


def test_fit_line_is_least_squares_and_never_slopes_down():
    assert fit_line([1, 2, 3], [3, 5, 7]) == pytest.approx((1.0, 2.0))
    assert fit_line([1, 2, 3], [3, 2, 1]) == pytest.approx((2.0, 0.0))  # noise: the mean, flat
    assert fit_line([5, 5], [1.0, 3.0]) == pytest.approx((2.0, 0.0))


def test_no_cache_extrapolation_sums_the_fitted_line_over_every_step():
    # t(L) = 0.1 s + 0.01 s/token: 4 steps timed (L = 100..103) plus a probe at L = 100 + 10 - 1.
    lengths = [100, 101, 102, 103, 109]
    secs = [0.1 + 0.01 * n for n in lengths]
    est = extrapolate_no_cache(lengths, secs, prompt_len=100, gen=10, requests=16, timed_requests=1)
    per_request = sum(0.1 + 0.01 * n for n in range(100, 110))  # = 1.0 + 0.01 * 1045 = 11.45 s
    assert est.per_request_s == pytest.approx(per_request)
    assert est.total_s == pytest.approx(16 * per_request)
    assert est.total_tps == pytest.approx(16 * 10 / (16 * per_request))
    assert est.estimated is True and "estimated" in est.method
    assert (est.intercept_s, est.slope_s_per_token) == pytest.approx((0.1, 0.01))


def test_no_cache_line_never_goes_below_zero_at_the_first_step():
    est = extrapolate_no_cache([10, 11, 30], [0.01, 0.01, 5.0], prompt_len=10, gen=30, requests=1, timed_requests=1)
    assert est.slope_s_per_token == 0.0 and est.intercept_s == pytest.approx(5.02 / 3)
    assert est.per_request_s == pytest.approx(30 * 5.02 / 3)


def test_no_cache_fully_timed_is_the_plain_sum_not_an_estimate():
    lengths = [10, 11, 12] * 2
    secs = [0.5, 0.7, 0.6, 0.55, 0.65, 0.75]
    est = extrapolate_no_cache(lengths, secs, prompt_len=10, gen=3, requests=2, timed_requests=2)
    assert est.estimated is False and est.method.startswith("measured")
    assert est.total_s == pytest.approx(sum(secs))
    assert est.total_tps == pytest.approx(6 / sum(secs))


def test_parse_requests():
    assert parse_requests("1,4,8,16") == (1, 4, 8, 16)
    assert parse_requests(" 2 , 3 ") == (2, 3)
    for bad in ("", "1,,2", "1,x", "0", "-1", "1,1", "100000"):
        with pytest.raises(ValueError, match="bad --requests"):
            parse_requests(bad)


# ----- peer plumbing without a real peer -----


def test_a_llama_cpp_crash_by_signal_is_retried_without_extra_buffer_types(monkeypatch):
    starts = []

    class FakePeer:
        def __init__(self, kind, *, extra_bufts, **kw):
            starts.append(extra_bufts)
            self.info = {}

        def run(self, ids, gen):
            if starts[-1]:
                raise PeerCrashed("peer llama.cpp died (signal SIGSEGV)", 11)

        def close(self):
            return None

    monkeypatch.setattr(peers_mod, "PeerProcess", FakePeer)
    peer = start_peer("llama.cpp", gguf=None, model_dir=None, threads=2, n_ctx=64, warmup_ids=[1], warmup_gen=2,
                      log=lambda m: None)  # fmt: skip
    assert starts == [True, False]
    assert "extra buffer types" in peer.info["fallback"]


def test_a_peer_that_exits_with_an_error_is_not_retried(monkeypatch):
    class FakePeer:
        def __init__(self, kind, **kw):
            raise PeerCrashed("peer llama.cpp died (exit code 1): bad file", None)

    monkeypatch.setattr(peers_mod, "PeerProcess", FakePeer)
    with pytest.raises(PeerCrashed, match="bad file"):
        start_peer("llama.cpp", gguf=None, model_dir=None, threads=2, n_ctx=64, warmup_ids=[1], warmup_gen=2)


def test_busy_core_runs_a_process_only_inside_the_block():
    with BusyCore() as busy:
        assert busy.proc.poll() is None
    assert busy.proc.poll() is not None


# ----- bad input: one line on stderr, exit code 2 -----


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--requests", "1,x"], "bad --requests list"),
        (["--requests", "0"], "bad --requests list"),
        (["--gen", "1"], "--gen must be >= 2"),
        (["--reps", "0"], "--reps must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    rc, out, err = bench(capsys, *args)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_a_peer_that_is_not_installed_exits_2(monkeypatch, tiny_model_dir, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(peers_mod.importlib.util, "find_spec", lambda n: None if n == "llama_cpp" else real(n))
    rc, _, err = bench(capsys, "--model", str(tiny_model_dir), "--peer", "llama.cpp")
    assert rc == 2 and "llama.cpp is not installed" in err and err.count("\n") == 1


def test_a_prompt_longer_than_the_context_exits_2(tiny_model_dir, capsys):
    rc, _, err = bench(capsys, "--model", str(tiny_model_dir), "--prompt-len", "120", "--gen", "20")
    assert rc == 2 and "exceed the model's context (128)" in err.splitlines()[-1]


def test_llama_cpp_on_a_folder_without_gguf_exits_2(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr("tiny_llm_playground.engine.bench.run.check_installed", lambda peer: None)
    rc, _, err = bench(capsys, "--model", str(tiny_model_dir), "--peer", "llama.cpp")
    assert rc == 2 and "pass --peer-gguf" in err


def test_the_cli_prints_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "--model", "no-such-model"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[3],
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr


# ----- the KV cache's options -----


def test_paged_and_dense_side_by_side_report_ratios_and_equal_outputs(tiny_model_dir, capsys):
    rc, out, err = bench(capsys, "--model", str(tiny_model_dir), *TINY, "--requests", "1,3", "--kv-cache", "both",
                         "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    assert res["engine"]["kv"]["cache"] == "paged" and res["engine"]["kv"]["block_bytes"] > 0
    assert [lv["n"] for lv in res["dense"]["levels"]] == [1, 3]
    assert all(lv["same_tokens_as_paged"] for lv in res["dense"]["levels"])
    assert res["ratios"]["paged_vs_dense_decode"] > 0 and "paged_vs_dense_concurrent_3" in res["ratios"]
    names = {c["name"]: c for c in res["checks"]}
    assert names["paged outputs equal dense, every level"]["passed"] is True
    assert "token_ids" not in res["engine"]["levels"][0], "outputs are compared, not kept in the JSON"


def test_a_capped_pool_preempts_and_matches_the_uncapped_outputs(tiny_model_dir, capsys):
    # 4 requests of 14 + 4 tokens (2 blocks of 16 each, taken as the tokens arrive) in a pool of 3 blocks:
    # three start, and the oldest's second block must come from the newest.
    rc, out, err = bench(capsys, "--model", str(tiny_model_dir), *TINY, "--prompt-len", "14", "--requests", "4",
                         "--kv-pool-tokens", "48", "--batch-invariant", "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    capped = res["capped"]
    assert capped["pool_tokens"] == 48 and capped["pool_full_after"] is True and capped["batch_invariant"]
    assert capped["levels"][0]["identical_to_uncapped"] is True and capped["levels"][0]["preemptions"] > 0
    assert capped["levels"][0]["agreeing_tokens"] == [capped["gen"]] * 4
    passed = {c["name"]: c["passed"] for c in res["checks"]}
    assert passed["capped pool: outputs equal the uncapped run"] and passed["capped pool: preemptions"]


def test_without_batch_invariance_the_capped_check_says_what_it_needs():
    from tiny_llm_playground.engine.bench.stats import kv_checks

    level = {"n": 2, "identical_to_uncapped": False, "preemptions": 3, "agreeing_tokens": [8, 5]}
    res = {
        "capped": {"pool_tokens": 48, "batch_invariant": False, "gen": 8, "levels": [level], "pool_full_after": True}
    }
    check = {c.name: c for c in kv_checks(res)}["capped pool: outputs equal the uncapped run"]
    assert check.passed is None and "needs --batch-invariant" in check.note and "1 of 2" in check.note


def test_the_shared_prefix_workload_hits_the_system_prompt(tiny_model_dir, capsys):
    rc, out, err = bench(capsys, "--model", str(tiny_model_dir), "--workload", "shared-prefix", "--system-tokens",
                         "48", "--gen", "4", "--requests", "4", "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    sp = res["shared_prefix"]
    assert sp["requests"] == 4 and sp["system_tokens"] == 48 and sp["same_outputs"] is True
    on, off = sp["prefix_cache"], sp["no_prefix_cache"]
    assert on["cached_prompt_tokens"][0] == 0 and min(on["cached_prompt_tokens"][1:]) >= 48 - 16
    assert off["cached_prompt_tokens"] == [0, 0, 0, 0]
    assert on["kv"]["prefix_hit_tokens"] >= 3 * 32 and off["kv"]["prefix_hit_tokens"] == 0
    names = [c["name"] for c in res["checks"]]
    assert "shared prefix: cached TTFT speed-up vs no prefix cache" in names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "shared-prefix", "--kv-cache", "dense"], "prefix cache"),
        (["--kv-cache", "both", "--kv-pool-tokens", "64"], "cap one cache at a time"),
        (["--block-size", "0"], "--block-size"),
    ],
)
def test_bad_kv_arguments_exit_2_with_one_line(args, message, capsys):
    rc = main(["bench", "--model", "qwen2.5-coder-0.5b", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
