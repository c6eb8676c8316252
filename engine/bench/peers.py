"""The parent side of the peers: start one in a child process, feed it token ids, read its timings; and the
busy-loop process that `--contend` runs beside the measurements.

Peers are optional (`pip install -e '.[bench]'` for llama-cpp-python; mlx-lm comes with the dev extra):
`check_installed` says which is missing before anything slow starts. llama.cpp runs on the model's GGUF
(the cache's joined file for a manifest name, or --peer-gguf), mlx-lm on the converted HF-format folder.
If llama.cpp dies from a signal while loading or on its first run (its AMX path does where the kernel has
not enabled AMX tile state), it is started again once with extra buffer types off, and the result says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PEERS = ("none", "llama.cpp", "mlx-lm")
_MODULES = {"llama.cpp": "llama_cpp", "mlx-lm": "mlx_lm"}
_PACKAGES = {"llama.cpp": "llama-cpp-python", "mlx-lm": "mlx-lm"}
_CHILD = Path(__file__).with_name("peer_child.py")


class PeerUnavailable(RuntimeError):
    """The named peer cannot run here (not installed, no GGUF); the message says how to fix it."""


class PeerCrashed(RuntimeError):
    """The peer's process died; `signal` is set when a signal killed it."""

    def __init__(self, message: str, sig: int | None = None) -> None:
        super().__init__(message)
        self.signal = sig


def check_installed(peer: str) -> None:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    if peer != "none" and importlib.util.find_spec(_MODULES[peer]) is None:
        raise PeerUnavailable(
            f"peer {peer} is not installed: pip install {_PACKAGES[peer]} (or pip install -e '.[bench]')"
        )


@dataclass(frozen=True)
class PeerRun:
    prefill_s: float
    decode_s: float
    prompt_tokens: int
    tokens: tuple[int, ...]

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        n = len(self.tokens) - 1  # the first token came out of the prefill
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


class PeerProcess:
    """One peer in a child process (engine/bench/peer_child.py), spoken to over JSON lines."""

    def __init__(self, kind: str, *, gguf: Path | None = None, model_dir: Path | None = None,
                 threads: int, n_ctx: int, extra_bufts: bool = True) -> None:  # fmt: skip
        self.kind = kind
        cmd = [sys.executable, str(_CHILD), kind, "--threads", str(threads), "--n-ctx", str(n_ctx)]
        if gguf is not None:
            cmd += ["--gguf", str(gguf)]
        if model_dir is not None:
            cmd += ["--model-dir", str(model_dir)]
        if not extra_bufts:
            cmd.append("--no-extra-bufts")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1
        )
        self.info: dict = self._recv()["info"]

    def run(self, ids: list[int], gen: int) -> PeerRun:
        self._send({"cmd": "run", "ids": [int(t) for t in ids], "gen": int(gen)})
        r = self._recv()
        if "error" in r:
            raise RuntimeError(f"peer {self.kind} failed: {r['error']}")
        return PeerRun(r["prefill_s"], r["decode_s"], r["prompt_tokens"], tuple(r["tokens"]))

    def close(self) -> int | None:
        """Stop the child; returns its peak RSS in bytes (None if it could not say)."""
        rss = None
        if self.proc.poll() is None:
            try:
                self._send({"cmd": "quit"})
                rss = self._recv().get("peak_rss_bytes")
                self.proc.wait(timeout=30)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        return rss

    def _send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died()

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._died()
        return json.loads(line)

    def _died(self) -> None:
        code = self.proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        sig = -code if code < 0 else None
        how = f"signal {signal.Signals(sig).name}" if sig else f"exit code {code}"
        raise PeerCrashed(f"peer {self.kind} died ({how}): {' | '.join(tail) or 'no output'}", sig)


def start_peer(kind: str, *, gguf: Path | None, model_dir: Path | None, threads: int, n_ctx: int,
               warmup_ids: list[int], warmup_gen: int, log=print) -> PeerProcess:  # fmt: skip
    """Start a peer and run it once (warm-up). llama.cpp killed by a signal is retried without extra buffer
    types (the AMX / repack buffers); its info then carries `fallback`."""
    attempts = [True, False] if kind == "llama.cpp" else [True]
    for extra in attempts:
        peer = None
        try:
            peer = PeerProcess(kind, gguf=gguf, model_dir=model_dir, threads=threads, n_ctx=n_ctx, extra_bufts=extra)
            peer.run(warmup_ids, warmup_gen)
            if not extra:
                peer.info["fallback"] = "the default start crashed; extra buffer types (AMX, repack) turned off"
            return peer
        except PeerCrashed as e:
            if peer is not None:
                peer.close()
            if e.signal is None or extra is False or len(attempts) == 1:
                raise
            log(f"  {e}; retrying without extra buffer types")
    raise AssertionError("unreachable")


# ----- --contend: another process that keeps one core busy -----

_BUSY_LOOP = """
import os, time
parent, end = os.getppid(), time.monotonic() + {limit}
while os.getppid() == parent and time.monotonic() < end:  # stops by itself if the bench dies
    for _ in range(200000):
        pass
"""


class BusyCore:
    """Context manager: a child Python process spinning in a pure busy loop (one core) while inside."""

    def __init__(self, limit_s: float = 3600.0) -> None:
        self.limit_s = limit_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BusyCore:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BUSY_LOOP.format(limit=self.limit_s)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # let it get going
        if self.proc.poll() is not None:
            raise RuntimeError(f"the busy-loop process exited at once (code {self.proc.returncode})")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
