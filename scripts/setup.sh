#!/usr/bin/env bash
# Sets up Tiny LLM Playground on a fresh machine; safe to rerun (every step is idempotent).
#   bash scripts/setup.sh          venv + dependencies + CPU kernels + the default model
#   bash scripts/setup.sh --test   the same, plus Debian chromium for the browser tests
# Environment: PYTHON (interpreter for the venv, default python3), TINY_LLM_MODEL (model to fetch),
# TINY_LLM_CACHE (model cache folder).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "== installing dependencies"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"

echo "== building the CPU kernels (C++ MLX extension)"
if ! .venv/bin/python -m tiny_llm_playground.kernels.build; then
  echo "WARNING: the CPU kernel extension did not build; the engine falls back to the slow reference" >&2
  echo "WARNING: backend. See the build output above; \`.venv/bin/tinyllm info\` shows the backends." >&2
fi

echo "== fetching the model"
.venv/bin/tinyllm fetch "${TINY_LLM_MODEL:-qwen2.5-coder-0.5b}"

# Chromium, and CJK fonts so Chinese/Japanese tokens render as glyphs (not boxes) in the screenshots.
if [ "${1:-}" = "--test" ] && { [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; }; then
  echo "== installing Debian chromium and CJK fonts for the browser tests"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk \
      >/dev/null
  else
    echo "WARNING: install chromium at /usr/bin/chromium to run the browser tests (they skip without it)," >&2
    echo "WARNING: and fonts-noto-cjk so CJK text renders in the screenshots" >&2
  fi
fi
echo "== ready"
