"""The README's figures come from code, not from hand."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_method_cost_table_matches_the_script():
    page = (ROOT / "docs" / "methods" / "index.md").read_text()  # the table moved from the README to the site
    table = re.search(r"<!-- method-costs:start -->\n(.*?)\n<!-- method-costs:end -->", page, re.S).group(1)
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "method_costs.py")],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert table == printed


def test_ci_runs_the_readme_test_command():
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_tests_read_nothing_outside_the_repository():
    """A fresh clone has nothing beside the repository: every fixture a test reads lives under tests/."""
    outside = re.compile(r"""\.\./shared|["']shared["']\s*/|parents\[[2-9]\]""")
    offenders = [path.name for path in (ROOT / "tests").rglob("*.py")
                 if path != Path(__file__).resolve() and outside.search(path.read_text())]
    assert offenders == [], f"tests that reach outside the repository: {offenders}"
    assert (ROOT / "tests" / "fixtures" / "peers" / "README.md").is_file()


def test_quick_start_runs_as_written(tmp_path, monkeypatch):
    """The first code a visitor copies must run on a fresh set-up, unchanged."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README quick start", "exec"), {})
    assert {p.name for p in (tmp_path / "out" / "sentiment").iterdir()} >= {"adapter.json", "adapter.safetensors"}
