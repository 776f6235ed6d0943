#!/usr/bin/env bash
# Compile requirements/lock.txt, the exact set scripts/setup.sh installs, from splice's ranges (pyproject.toml,
# with the extras the tests need) and requirements/torch.txt (torch's CPU pin). pip-tools keeps every pin the
# lock already has that still fits; pass its options through to move them:
#   bash scripts/lock.sh                                  # after a change to pyproject.toml's ranges
#   bash scripts/lock.sh --upgrade-package transformers   # move one package to its newest release
#   bash scripts/lock.sh --upgrade                        # move everything
# pip-tools resolves with pip, so it sees the local CPU torch wheel that pip's own configuration points at.
# The lock is for the Python that runs this (the header names it); setup.sh's Python should be the same.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

venv_create .venv-lock
[ -x .venv-lock/bin/pip-compile ] || venv_pip .venv-lock pip-tools==7.7.0
# Compiled beside the lock and moved over it only once checked: a failed run leaves the old lock whole.
draft=$(mktemp requirements/.lock.XXXXXX)
trap 'rm -f "$draft"' EXIT
cp -p requirements/lock.txt "$draft"  # pip-tools starts from its pins; -p: and the lock keeps its mode
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" .venv-lock/bin/pip-compile --quiet --strip-extras --allow-unsafe \
  --no-emit-index-url --no-emit-find-links "${SPLICE_EXTRAS[@]/#/--extra=}" \
  --output-file "$draft" "$@" pyproject.toml requirements/torch.txt
if grep -qiE '^(nvidia-|cuda-)' "$draft"; then
  echo "scripts/lock.sh: the new lock lists CUDA wheels, so a CUDA torch got in; keep torch pinned to the CPU" \
       "build in requirements/torch.txt. requirements/lock.txt is unchanged." >&2
  exit 1
fi
mv "$draft" requirements/lock.txt
