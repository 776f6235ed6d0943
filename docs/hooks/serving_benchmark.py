"""mkdocs hook: the sentence under the serving chart is written from the same results file the chart is drawn from.

A page holding the line ``<!-- serving-benchmark -->`` gets, in its place, what was measured (model, machine,
load) as ``scripts/serving_chart.py``'s :func:`caption` reads it from its results file, so the words cannot
drift from the figures (tests/test_docs.py checks that the committed chart is drawn from that file too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MARKER = "<!-- serving-benchmark -->"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def sentence() -> str:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import serving_chart
    finally:
        sys.path.remove(str(SCRIPTS))
    results = serving_chart.RESULTS
    where = results.relative_to(serving_chart.ROOT)
    return (f"Measured by `benchmarks/serve_load.py --workload generate` (`{where}`): "
            f"{serving_chart.caption(json.loads(results.read_text()))}")


def on_page_markdown(markdown: str, **kwargs) -> str:
    return markdown.replace(MARKER, sentence()) if MARKER in markdown else markdown
