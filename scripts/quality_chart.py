"""Draw the quality table (benchmarks/quality_results.json) as an SVG bar chart for the documentation site.

    python scripts/quality_chart.py [--out docs/images/quality.svg]

Plain SVG written by hand (no plotting library, no timestamps), so the same results give the same bytes:
tests/test_docs.py checks that the committed chart is what this script draws today.
"""

from __future__ import annotations

import argparse
import json
import statistics
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "quality_results.json"
CHART = ROOT / "docs" / "images" / "quality.svg"
WIDTH, ROW, LEFT, TOP = 760, 26, 250, 40
LOW, HIGH = 0.65, 0.78  # the accuracy axis: every arm lies inside it


def arms(results: dict) -> list[tuple[str, float, float, float]]:
    """(arm, mean test accuracy, its standard deviation, trainable %) per arm, best first."""
    rows = []
    for arm, runs in results["tweet-sentiment"]["runs"].items():
        scores = [run["test"] for run in runs]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rows.append((arm, statistics.mean(scores), spread, runs[0]["trainable_percent"]))
    return sorted(rows, key=lambda row: -row[1])


def draw(results: dict) -> str:
    rows = arms(results)
    height = TOP + ROW * len(rows) + 40
    scale = (WIDTH - LEFT - 90) / (HIGH - LOW)

    def x(value: float) -> float:
        return LEFT + (value - LOW) * scale

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{LEFT}" y="20" font-size="14">Test accuracy, tweet sentiment, MiniLM-L6 '
             '(mean ± sd of 3 seeds)</text>']
    for tick in range(66, 79, 2):
        at = x(tick / 100)
        parts.append(f'<line x1="{at:.1f}" y1="{TOP - 6}" x2="{at:.1f}" y2="{height - 34}" stroke="#ddd"/>'
                     f'<text x="{at:.1f}" y="{height - 20}" text-anchor="middle">{tick}%</text>')
    for i, (arm, mean, spread, trainable) in enumerate(rows):
        y = TOP + i * ROW
        parts.append(f'<text x="{LEFT - 8}" y="{y + 15}" text-anchor="end">{escape(arm)} '
                     f'({trainable:.2f} % trainable)</text>')
        parts.append(f'<rect x="{LEFT}" y="{y + 4}" width="{x(mean) - LEFT:.1f}" height="{ROW - 8}" '
                     f'fill="{"#888" if arm in ("full", "probe") else "#3f7fbf"}"/>')
        parts.append(f'<line x1="{x(mean - spread):.1f}" y1="{y + 13}" x2="{x(mean + spread):.1f}" y2="{y + 13}" '
                     'stroke="#000"/>')
        parts.append(f'<text x="{x(mean + spread) + 6:.1f}" y="{y + 17}">{100 * mean:.2f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHART)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(draw(json.loads(RESULTS.read_text())))
    print(args.out)


if __name__ == "__main__":
    main()
