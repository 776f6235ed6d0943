"""The documentation site: ``mkdocs build --strict`` passes (a broken link, a missing page or an API entry
without a docstring fails it), the CLI reference holds every command, and the quality chart is current."""

from __future__ import annotations

import argparse
import html
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splice.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="the docs extra: pip install 'splice[docs]'")


def build(docs_root: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    # no -q: mkdocs counts strict-mode warnings only when it logs them
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=docs_root, env=env, capture_output=True, text=True, timeout=600)


def test_site_builds_strict_with_a_generated_cli_reference(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in commands.choices:
        assert f"splice {name}" in cli
    assert "--gradient-checkpointing" in cli  # option text comes from the parsers themselves
    assert "push_to_hub" in (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    serving = (tmp_path / "site" / "serving" / "index.html").read_text()
    assert 'src="../images/serving.svg"' in serving
    assert serving_chart().caption(json.loads(serving_chart().RESULTS.read_text())) in html.unescape(serving), \
        "docs/hooks/serving_benchmark.py should write what was measured under the serving chart"


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(ROOT / "scripts", copy / "scripts")  # the serving page's hook reads the results through them
    shutil.copytree(ROOT / "benchmarks" / "results", copy / "benchmarks" / "results")
    page = copy / "docs" / "hub.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr


def chart_script(name: str):
    """scripts/<name>.py, imported (the scripts are not a package; they import their sibling chart_svg)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def serving_chart():
    return chart_script("serving_chart")


def test_quality_chart_is_drawn_from_the_current_results():
    quality_chart = chart_script("quality_chart")
    drawn = quality_chart.draw(json.loads(quality_chart.RESULTS.read_text()))
    assert (ROOT / "docs" / "images" / "quality.svg").read_text() == drawn, \
        "benchmarks/quality_results.json changed: run python scripts/quality_chart.py and commit the chart"


def test_serving_chart_is_drawn_from_the_current_results():
    chart = serving_chart()
    drawn = chart.draw(json.loads(chart.RESULTS.read_text()))
    assert (ROOT / "docs" / "images" / "serving.svg").read_text() == drawn, \
        f"{chart.RESULTS.name} changed: run python scripts/serving_chart.py and commit the chart"


def test_every_built_in_method_has_a_page_in_the_nav_and_the_tables():
    """A method that lands without its page fails here (mkdocs only logs pages missing from the nav)."""
    from splice.methods import METHODS

    nav = (ROOT / "mkdocs.yml").read_text()
    overview = (ROOT / "docs" / "methods" / "index.md").read_text()
    readme = (ROOT / "README.md").read_text()
    pages = {path.name: path.read_text() for path in (ROOT / "docs" / "methods").glob("*.md")}
    missing = []
    for config in METHODS.values():
        if not config.__module__.startswith("splice.methods.") or config.method == "head_only":  # the probe: no method
            continue
        target = f"::: {config.__module__}.{config.__name__}"
        page = next((name for name, text in pages.items() if target in text), None)
        if page is None or f"methods/{page}" not in nav or f"({page})" not in overview \
                or f"(docs/methods/{page})" not in readme:
            missing.append(f"{config.__name__} (page {page})")
    assert missing == [], f"methods without a page in mkdocs.yml, docs/methods/index.md and README.md: {missing}"
