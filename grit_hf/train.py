"""`python -m grit_hf.train` / `accelerate launch -m grit_hf.train`: the `grit-hf train` command as a module to launch
(the parser and the training run are `grit_hf.cli.train`)."""

from __future__ import annotations

from .cli.train import main, train

__all__ = ["main", "train"]

if __name__ == "__main__":
    raise SystemExit(main())
