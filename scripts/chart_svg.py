"""The SVG pieces the documentation's charts are drawn from (scripts/quality_chart.py, scripts/serving_chart.py).

Plain SVG text, no plotting library and no timestamps, so the same results always give the same bytes and a
test can check that a committed chart is what its script draws today. Whole numbers are written as they are,
fractional ones with one decimal.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path


def number(value: float | str) -> str:
    return f"{value:.1f}" if isinstance(value, float) else escape(str(value))


def attributes(**values: float | str) -> str:
    """``text_anchor="end"`` → `` text-anchor="end"``: SVG's hyphenated names from Python keywords."""
    return "".join(f' {key.replace("_", "-")}="{number(value)}"' for key, value in values.items())


def text(x: float, y: float, words: str, **style: float | str) -> str:
    return f"<text{attributes(x=x, y=y, **style)}>{escape(words, quote=False)}</text>"


def line(x1: float, y1: float, x2: float, y2: float, stroke: str) -> str:
    return f"<line{attributes(x1=x1, y1=y1, x2=x2, y2=y2, stroke=stroke)}/>"


def rect(x: float, y: float, width: float, height: float, fill: str) -> str:
    return f"<rect{attributes(x=x, y=y, width=width, height=height, fill=fill)}/>"


def group(parts: list[str], **labels: str) -> str:
    """``<g>`` around ``parts``, its ``labels`` (``data_engine=...``) naming the series for readers and tests."""
    return "\n".join([f"<g{attributes(**labels)}>", *parts, "</g>"])


def document(width: int, height: int, parts: list[str]) -> str:
    """The whole file: one ``<svg>`` holding ``parts``, one per line."""
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            'font-family="sans-serif" font-size="12">')
    return "\n".join([head, *parts, "</svg>"]) + "\n"


def write(path: Path, svg: str) -> None:
    """Write beside ``path`` and rename over it, so an interrupted run never leaves half a chart in the docs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(svg)
    os.replace(partial, path)
