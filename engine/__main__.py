"""`python -m engine ...` from the repo root: the `tinyllm` command (engine/cli.py)."""

import sys

from tiny_llm_playground.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
