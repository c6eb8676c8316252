"""`python -m app ...` from the repo root: the `tinyllm-playground` command (app/cli.py)."""

import sys

from tiny_llm_playground.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
