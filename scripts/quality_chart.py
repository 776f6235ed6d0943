"""Draw the quality table (benchmarks/quality_results.json) as an SVG bar chart for the documentation site.

    python scripts/quality_chart.py [--out docs/images/quality.svg]

Drawn from scripts/chart_svg.py's pieces, so the same results give the same bytes: tests/test_docs.py checks
that the committed chart is what this script draws today.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from chart_svg import document, line, rect, text, write

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

    parts = [text(LEFT, 20, "Test accuracy, tweet sentiment, MiniLM-L6 (mean ± sd of 3 seeds)", font_size=14)]
    for tick in range(66, 79, 2):
        at = x(tick / 100)
        parts.append(line(at, TOP - 6, at, height - 34, "#ddd")
                     + text(at, height - 20, f"{tick}%", text_anchor="middle"))
    for i, (arm, mean, spread, trainable) in enumerate(rows):
        y = TOP + i * ROW
        parts.append(text(LEFT - 8, y + 15, f"{arm} ({trainable:.2f} % trainable)", text_anchor="end"))
        parts.append(rect(LEFT, y + 4, x(mean) - LEFT, ROW - 8, "#888" if arm in ("full", "probe") else "#3f7fbf"))
        parts.append(line(x(mean - spread), y + 13, x(mean + spread), y + 13, "#000"))
        parts.append(text(x(mean + spread) + 6, y + 17, f"{100 * mean:.2f}"))
    return document(WIDTH, height, parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHART)
    args = parser.parse_args()
    write(args.out, draw(json.loads(RESULTS.read_text())))
    print(args.out)


if __name__ == "__main__":
    main()
