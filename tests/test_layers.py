"""The layering of docs/architecture.md holds: import-linter's contract in pyproject.toml is kept.

It counts every import (function-local and TYPE_CHECKING ones too), so a new cycle or an
import upwards fails the normal test command, not only a separate CI step.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports() -> str:
    found = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(found).exists():
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]').")
    return found


def run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([lint_imports(), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_layers_contract_is_kept():
    result = run(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_import_upwards_breaks_it(tmp_path):
    """A function-local import of the model from a reader (what the knot was made of) is caught."""
    shutil.copytree(ROOT / "splice", tmp_path / "splice")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "splice" / "checkpoint.py", "a") as module:
        module.write("\n\ndef _upwards():\n    from .model import AdaptedModel  # noqa: F401\n")
    result = run(tmp_path)
    assert result.returncode != 0
    assert "splice.checkpoint -> splice.model" in result.stdout


def test_no_submodule_shadows_a_public_name():
    """Importing a submodule sets it as an attribute of the package: a module named like a lazy export
    (splice/attach.py) would turn ``splice.attach`` into a module once anything imported it."""
    import splice

    clashes = sorted(name for name in splice._LAZY if (ROOT / "splice" / f"{name}.py").exists()
                     or (ROOT / "splice" / name / "__init__.py").exists())
    assert clashes == [name for name in ("assets", "heads", "presets") if name in clashes]  # exported as modules
    import splice.adapted  # noqa: F401  the module that defines attach
    assert callable(splice.attach) and not isinstance(splice.attach, type(splice))
