"""The peer side of the benchmark: a child process that loads one peer and times it on given token ids.

Run as a script (`python engine/bench/peer_child.py KIND ...`), not as part of the `engine` package, so
the child imports only the peer and numpy: its threads, memory and peak RSS are the peer's alone.
Protocol: JSON lines. The child writes {"ready": true, "info": {...}} once loaded; then for each
{"cmd": "run", "ids": [...], "gen": n} line it writes {"prefill_s", "decode_s", "prompt_tokens",
"tokens"}; {"cmd": "quit"} gets {"peak_rss_bytes"} and the child exits. A failed command gets
{"error": "..."}.

Both peers decode greedily and never stop at EOS: llama.cpp through `Llama.eval` token by token with an
argmax over the last position's logits, mlx-lm through its own `generate_step` (which has no EOS check).
Prefill = prompt in -> first token out; decode = the remaining gen - 1 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

# Run as a script, this folder is sys.path[0]: drop it so its module names cannot shadow the peers' imports.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

# GGUF general.file_type -> llama.cpp's name for it (the common ones).
GGUF_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip


class LlamaCppPeer:
    def __init__(self, gguf: str, threads: int, n_ctx: int, extra_bufts: bool) -> None:
        import llama_cpp

        if not extra_bufts:
            # Llama() takes its model params from this function; turning extra buffer types off skips the
            # CPU weight-repacking / AMX buffers (llama.cpp's AMX path crashes where the kernel does not
            # enable AMX tile state).
            default = llama_cpp.llama_model_default_params

            def params():
                p = default()
                p.use_extra_bufts = False
                return p

            llama_cpp.llama_model_default_params = params
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=gguf, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self.n_vocab = self.llm.n_vocab()
        ftype = self.llm.metadata.get("general.file_type")
        self.info = {
            "version": llama_cpp.__version__,
            "gguf": gguf,
            "gguf_file_type": GGUF_FILE_TYPES.get(int(ftype), ftype) if ftype is not None else None,
            "threads": threads,
            "n_ctx": n_ctx,
            "extra_buffer_types": extra_bufts,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        }

    def _argmax_last(self) -> int:
        import numpy as np

        ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def run(self, ids: list[int], gen: int) -> dict:
        llm = self.llm
        llm.reset()  # n_tokens = 0: eval() drops the old KV entries
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = self._argmax_last()
        t1 = time.perf_counter()
        out = [tok]
        for _ in range(gen - 1):
            llm.eval([tok])
            tok = self._argmax_last()
            out.append(tok)
        t2 = time.perf_counter()
        return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "prompt_tokens": len(ids), "tokens": out}


class MlxLmPeer:
    def __init__(self, model_dir: str) -> None:
        from pathlib import Path

        import mlx.core as mx
        import mlx_lm
        from mlx_lm.generate import generate_step
        from mlx_lm.utils import load_model

        self.mx = mx
        self.generate_step = generate_step
        self.model, _ = load_model(Path(model_dir))
        self.info = {"version": mlx_lm.__version__, "mlx": mx.__version__, "model_dir": model_dir}

    def run(self, ids: list[int], gen: int) -> dict:
        t0 = time.perf_counter()
        t1 = None
        out: list[int] = []
        for tok, _ in self.generate_step(self.mx.array(ids), self.model, max_tokens=gen):
            out.append(int(tok))
            if t1 is None:
                t1 = time.perf_counter()
        t2 = time.perf_counter()
        return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "prompt_tokens": len(ids), "tokens": out}


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="benchmark peer child (spoken to over JSON lines)")
    ap.add_argument("kind", choices=["llama.cpp", "mlx-lm"])
    ap.add_argument("--gguf")
    ap.add_argument("--model-dir")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--no-extra-bufts", action="store_true")
    args = ap.parse_args(argv)
    # The protocol gets its own copy of stdout; fd 1 then points at stderr, so whatever the C libraries
    # print cannot corrupt it.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    if args.kind == "llama.cpp":
        peer = LlamaCppPeer(args.gguf, args.threads, args.n_ctx, not args.no_extra_bufts)
    else:
        peer = MlxLmPeer(args.model_dir)
    send({"ready": True, "info": peer.info})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("cmd") == "quit":
            send({"peak_rss_bytes": peak_rss_bytes()})
            return 0
        try:
            send(peer.run([int(t) for t in msg["ids"]], int(msg["gen"])))
        except Exception as e:  # reported to the parent, which raises it there
            send({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
