"""`python tests/serve/slow_serve.py DELAY ARGS...`: `grit-hf serve ARGS...` in a process of its own whose generations
take DELAY more seconds per text piece (requests that outlast a grace period on any machine)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_helpers import slowed  # noqa: E402

from grit_hf.cli import main  # noqa: E402
from grit_hf.rag.gritrag import GritRAG  # noqa: E402

if __name__ == "__main__":
    GritRAG.generate_from_plan = slowed(GritRAG.generate_from_plan, float(sys.argv[1]))
    raise SystemExit(main(["serve", *sys.argv[2:]]))
