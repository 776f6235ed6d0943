"""Every Triton kernel against its PyTorch reference on CPU, through Triton's interpreter.

The cases live in ``kernel_cases.py`` and run in one child process started with
``TRITON_INTERPRET=1`` (Triton fixes compile-or-interpret when ``triton.language``
is imported, so it cannot be switched inside this process); each test here
asserts one case's result. Tolerances are stated in ``kernel_cases.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_cases import ROUTES, TOLERANCE, activations, cases, tables

from splice import kernels
from splice.errors import ConfigError
from splice.kernels import RowSlots, reference
from splice.kernels.segments import plan_segments

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    """Each case's result from a child process where Triton interprets its kernels on the CPU."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    script = Path(__file__).with_name("kernel_cases.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["case"]] = result
    assert results, f"the kernel cases did not run:\n{done.stderr[-3000:]}"
    return results


@pytest.mark.parametrize("case", list(cases()))
def test_triton_kernel_matches_reference(interpreted, case):
    result = interpreted.get(case, {"ok": False, "error": "the case did not report (the child process died?)"})
    assert result["ok"], result["error"]


@pytest.mark.parametrize("route", list(ROUTES))
def test_segment_plan_covers_each_token_once(route):
    rows, tokens, slots = ROUTES[route]
    members = 4
    local = torch.tensor([s if s >= 0 else members for s in slots])
    plan = plan_segments(local, members, tokens, block=4)
    seen = []
    for tile in range(plan.tiles):
        member = int(plan.tile_member[tile])
        if member == members:
            continue
        offsets = int(plan.tile_first[tile]) * 4 + torch.arange(4)
        offsets = offsets[offsets < int(plan.counts[member]) * tokens]
        row_ids = plan.order[int(plan.row_start[member]) + offsets // tokens]
        assert (local[row_ids] == member).all()  # a tile never crosses adapters
        seen += (row_ids * tokens + offsets % tokens).tolist()
    expected = [r * tokens + t for r in range(rows) if slots[r] >= 0 for t in range(tokens)]
    assert sorted(seen) == expected


@pytest.mark.parametrize("device", DEVICES)
def test_dispatcher_matches_reference_on_each_device(device):
    """The public ops give the reference's answer wherever they run (Triton on CUDA, the reference on CPU)."""
    x, slots = activations("mixed", 32)
    x, slots = x.to(device), slots.to(device)
    y = torch.randn(*x.shape[:2], 24, device=device)
    a, b, scale = (t.to(device) for t in tables((4, 32), (24, 4), ()))
    with torch.no_grad():
        out = kernels.lora(x, y, a, b, scale, slots)
    assert kernels.backend_for(x) == ("triton" if device == "cuda" else "reference")
    torch.testing.assert_close(out, reference.lora(x, y, a, b, scale, slots), **TOLERANCE[torch.float32])


def test_failed_kernel_warns_and_falls_back(monkeypatch):
    class Broken:
        @staticmethod
        def scale_rows(*args):
            raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setitem(kernels._modules, "triton_rows", Broken)
    monkeypatch.setitem(kernels._state, "broken", False)
    y, slots = activations("mixed", 8)
    (vectors,) = tables((8,), identity=1.0)
    with pytest.warns(RuntimeWarning, match="no kernel image"):
        out = kernels._run("triton_rows", "scale_rows", reference.scale_rows, (y, vectors, RowSlots(slots)))
    assert kernels._state["broken"]
    torch.testing.assert_close(out, reference.scale_rows(y, vectors, slots))


def test_backend_choice():
    x = torch.zeros(2, 3, requires_grad=True)
    assert kernels.backend_for(x) == "reference"  # CPU, and a gradient is needed
    old = kernels.set_backend("reference")
    try:
        assert kernels.backend_for(x.detach()) == "reference"
    finally:
        kernels.set_backend(old)
    with pytest.raises(ConfigError, match="Unknown kernel backend 'cuda'"):
        kernels.set_backend("cuda")
