"""``benchmarks/gpu_suite.py``: one command for the GPU checks and benchmarks. On the CPU, ``--quick`` runs the same
plumbing on tiny models; the plan for the GPU is checked to fit its 8 minutes; a step that fails or runs out of
time is recorded and the others still run. No timing is asserted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from helpers import benchmark_module


@pytest.fixture(scope="module")
def suite():
    yield from benchmark_module("gpu_suite.py", "gpu_suite")


def written(folder: Path) -> tuple[dict, str, str]:
    """The one JSON and one markdown file of a run, and their shared name."""
    (result,), (page,) = folder.glob("*.json"), folder.glob("*.md")
    assert result.stem == page.stem
    return json.loads(result.read_text()), page.read_text(), result.stem


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU plumbing check; on a GPU run the suite itself")
def test_quick_run_writes_one_json_and_one_markdown_named_after_card_and_date(suite, tmp_path):
    assert suite.main(["--quick", "--budget", "900", "--out", str(tmp_path)]) == 0
    summary, page, name = written(tmp_path)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert name.startswith(f"gpu-suite_{today}_") and name.endswith("_cpu-x86-64" if "x86" in summary["card"] else "")
    assert summary["card"] in page and summary["date"] in page and summary["quick"]
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["gpu_check", "multi_adapter", "train_step"]
    assert steps["gpu_check"]["status"] == "skipped" and "CUDA" in steps["gpu_check"]["reason"]
    multi, train = steps["multi_adapter"], steps["train_step"]
    assert multi["status"] == train["status"] == "ok" and "--json" not in multi["command"]
    arms = {(r["engine"].split()[0], r["shape"]) for r in multi["result"]["results"]}
    assert arms == {(engine, shape) for engine in ("splice", "peft") for shape in ("prefill", "decode")}
    assert multi["result"]["splice"]["load_ms"] > 0
    (comparison,) = train["result"]["comparisons"]
    assert comparison["peer"].startswith("peft") and comparison["params_equal"]
    assert any("adapters" in note for note in summary["not_run"])  # not installed here: said, not hidden
    for heading in ("| multi_adapter | ok |", "## Multi-adapter inference", "## Training step", "Not run:",
                    "`--quick`", "--adapters-python"):
        assert heading in page


def test_a_failed_or_slow_step_is_recorded_and_the_others_still_run(suite, tmp_path, monkeypatch):
    """The slow step is stopped at its limit, with the process it started; the time the failed step left unused
    goes to the next one."""
    child = tmp_path / "child.pid"
    slow = ["-c", f"import subprocess, time; pid = subprocess.Popen(['sleep', '60']).pid; "
                  f"open({str(child)!r}, 'w').write(str(pid)); print('started', flush=True); time.sleep(60)"]
    broken = ["-c", "raise SystemExit('broken on purpose')"]
    checks = dict(device="x", torch="x", triton="x", checks=[dict(name="a check", ok=True, detail="")])
    fine = ["-c", f"import sys; open(sys.argv[-1], 'w').write({json.dumps(checks)!r})"]
    steps = [suite.Step("multi_adapter", slow, 2), suite.Step("train_step", broken, 10),
             suite.Step("gpu_check", fine, 10)]
    monkeypatch.setattr(suite, "plan", lambda args, cuda: steps)
    started = time.monotonic()
    assert suite.main(["--budget", "22", "--out", str(tmp_path)]) == 1
    assert time.monotonic() - started < 20
    summary, page, _ = written(tmp_path)
    slow_run, broken_run, fine_run = summary["steps"]
    assert (slow_run["status"], broken_run["status"], fine_run["status"]) == ("timeout", "failed", "ok")
    assert "started" in slow_run["output_tail"] and "broken on purpose" in broken_run["output_tail"]
    assert fine_run["result"] == checks and fine_run["limit"] > 15  # its 10 s share plus what train_step left
    status = Path(f"/proc/{child.read_text()}/status")
    assert not status.exists() or "zombie" in status.read_text(), "the timed-out step's own child must be ended"
    assert "## multi_adapter: timeout" in page and "## GPU checks: 1 passed, 0 failed" in page


def test_the_gpu_plan_fits_eight_minutes_and_says_what_it_leaves_out(suite, tmp_path, capsys):
    steps = suite.plan(suite.parse_args([]), cuda=True)
    assert [s.name for s in steps] == ["gpu_check", "multi_adapter", "train_step"] and not any(s.skip for s in steps)
    assert sum(s.share for s in steps) <= 8 * 60 - 20  # room for start-up and writing the results
    multi, train = steps[1].argv, steps[2].argv
    assert "--graphs" in multi and "--shapes" not in multi and "--quick" not in multi  # prefill and decode, 1.1 B
    assert multi[multi.index("--engines") + 1] == train[train.index("--engines") + 1] == "splice,peft"
    with_peer = suite.plan(suite.parse_args(["--adapters-python", "/opt/ah/python"]), cuda=True)
    assert all("/opt/ah/python" in s.argv for s in with_peer[1:])
    assert "lora,pfeiffer" in with_peer[2].argv and not suite.left_out(suite.parse_args(["--adapters-python", "p"]))
    assert suite.main(["--dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "multi_adapter" in printed and "not run: splice vs adapters" in printed
    assert list(tmp_path.iterdir()) == [], "a dry run writes nothing"
