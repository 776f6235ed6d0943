#!/usr/bin/env bash
# Run the tests against the newest releases instead of the lock: torch stays at requirements/torch.txt's CPU
# build, and transformers, peft, accelerate and every other dependency move to their newest releases that fit it.
# Run before submitting a change, so the next release that breaks splice is found by us, not by our users:
#   bash scripts/test-newest.sh                 # the whole suite
#   bash scripts/test-newest.sh tests/test_x.py -x   # arguments go to pytest
# It builds its own environment, .venv-newest (the 4.57 overlay included), and never touches .venv; it prints
# which releases it tested and where they differ from requirements/lock.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

venv=.venv-newest
venv_create "$venv"
extras=$(IFS=,; echo "${SPLICE_EXTRAS[*]}")
venv_pip "$venv" --upgrade --upgrade-strategy eager -c requirements/torch.txt -e ".[$extras]"
venv_assets "$venv"
venv_overlay "$venv"
"$venv/bin/python" scripts/newest_versions.py requirements/lock.txt
exec "$venv/bin/python" -m pytest -q "$@"
