"""Triton kernels against their PyTorch references, case by case (run by tests/test_kernels.py).

Triton decides whether ``@triton.jit`` compiles or interprets when ``triton.language``
is first imported, so these cases run in a child process started with
``TRITON_INTERPRET=1`` (``python tests/kernel_cases.py`` prints one JSON line per
case); the test process itself never sees interpreted kernels. Importing this
module only lists the cases: the kernels are imported when the cases run.

``SPLICE_KERNEL_DEVICE=cuda`` runs the same cases on a GPU with compiled kernels
(``benchmarks/gpu_check.py`` does that).

Tolerances: fp32 1e-5 (absolute and relative). bf16: 2e-2 absolute and relative —
the kernels keep LoRA's and the bottleneck's intermediates in fp32 where the
reference rounds them to bf16 between its two matmuls.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

import torch

DEVICE = os.environ.get("SPLICE_KERNEL_DEVICE", "cpu")

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}

# (rows, tokens per row, slot of each row): -1 rows keep their input; slots not named are empty segments.
ROUTES = {
    "mixed": (5, 3, [2, -1, 0, 2, 1]),
    "empty_segments": (4, 2, [3, 3, -1, 0]),  # slots 1 and 2 have no rows
    "one_row": (1, 4, [1]),
    "one_adapter": (4, 5, [0, 0, 0, 0]),
    "all_base": (3, 2, [-1, -1, -1]),
    "decode": (6, 1, [1, 0, -1, 3, 1, 2]),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def tables(*shapes, capacity=4, dtype=torch.float32, identity=0.0, seed=0):
    """Random ``[capacity + 1, *shape]`` tables whose last slot is the identity."""
    gen = torch.Generator().manual_seed(seed)
    made = []
    for shape in shapes:
        t = torch.randn(capacity + 1, *shape, generator=gen) * 0.5
        t[capacity] = identity
        made.append(t.to(DEVICE, dtype))
    return made


def activations(route, features, dtype=torch.float32, seed=1):
    rows, tokens, slots = ROUTES[route]
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, tokens, features, generator=gen).to(DEVICE, dtype), torch.tensor(slots, device=DEVICE)


def check(out, expected, y, slots, dtype):
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
    untouched = slots < 0
    assert torch.equal(out[untouched], y[untouched]), "rows without an adapter changed"


def lora_case(schedule, route, dtype):
    from splice.kernels import RowSlots, reference, triton_lora

    d_in, d_out, r = 37, 21, 5  # odd sizes: every block is partly masked
    x, slots = activations(route, d_in, dtype)
    y = torch.randn(*x.shape[:2], d_out, device=DEVICE).to(dtype)
    a, b, scale = tables((r, d_in), (d_out, r), (), dtype=dtype)
    out = triton_lora.lora(x, y, a, b, scale, RowSlots(slots), schedule=schedule)
    check(out, reference.lora(x, y, a, b, scale, slots), y, slots, dtype)


def bottleneck_case(activation, route, dtype):
    from splice.kernels import RowSlots, reference, triton_bottleneck

    d, r = 70, 6  # d spans two column blocks of the up-projection
    h, slots = activations(route, d, dtype)
    y = torch.randn_like(h)
    weights = tables((r, d), (r,), (d, r), (d,), (), dtype=dtype)
    out = triton_bottleneck.bottleneck(h, y, *weights, RowSlots(slots), activation)
    check(out, reference.bottleneck(h, y, *weights, slots, activation), y, slots, dtype)


def rows_case(op, route, dtype):
    from splice.kernels import reference, triton_rows

    y, slots = activations(route, 300, dtype)  # two column blocks, the second partial
    (vectors,) = tables((300,), identity=1.0 if op == "scale_rows" else 0.0)
    out = getattr(triton_rows, op)(y, vectors, slots)
    check(out, getattr(reference, op)(y, vectors, slots), y, slots, dtype)


def group_local_case():
    """Rows routed by member ids (setup positions, as routing passes them) read the members' bank slots;
    a member with no adapter in this group (slot -1) leaves its rows unchanged."""
    from splice.kernels import RowSlots, reference, triton_bottleneck, triton_lora

    x, _ = activations("mixed", 16)
    local = torch.tensor([1, 3, 0, 1, 2], device=DEVICE)  # member 3 = none
    members = torch.tensor([4, 1, -1], device=DEVICE)  # member 0 sits in bank slot 4, member 1 in slot 1, 2 nowhere
    slots = torch.tensor([1, -1, 4, 1, -1], device=DEVICE)
    y = torch.randn(*x.shape[:2], 8, device=DEVICE)
    a, b, scale = tables((3, 16), (8, 3), (), capacity=6)
    out = triton_lora.lora(x, y, a, b, scale, RowSlots(slots, members, lambda: local), schedule="segments")
    check(out, reference.lora(x, y, a, b, scale, slots), y, slots, torch.float32)
    weights = tables((3, 16), (3,), (16, 3), (16,), (), capacity=6)
    out = triton_bottleneck.bottleneck(x, x, *weights, RowSlots(slots, members, lambda: local), "relu")
    check(out, reference.bottleneck(x, x, *weights, slots, "relu"), x, slots, torch.float32)


def cases() -> dict[str, Callable[[], None]]:
    """Every case by id; each raises (AssertionError with the mismatch) when a kernel is wrong."""
    found: dict[str, Callable[[], None]] = {"lora-group_local": group_local_case}
    for route in ROUTES:
        for dname, dtype in DTYPES.items():
            for schedule in ("gemv", "segments"):
                found[f"lora-{schedule}-{route}-{dname}"] = lambda s=schedule, r=route, d=dtype: lora_case(s, r, d)
            for op in ("scale_rows", "shift_rows"):
                found[f"{op}-{route}-{dname}"] = lambda o=op, r=route, d=dtype: rows_case(o, r, d)
        for activation in ("relu", "gelu", "silu", "tanh"):
            found[f"bottleneck-{activation}-{route}-fp32"] = (
                lambda a=activation, r=route: bottleneck_case(a, r, torch.float32))
        found[f"bottleneck-gelu-{route}-bf16"] = lambda r=route: bottleneck_case("gelu", r, torch.bfloat16)
    return found


def main() -> None:
    for name, case in cases().items():
        try:
            case()
            result = {"case": name, "ok": True}
        except Exception as error:  # report every case, not just the first failure
            result = {"case": name, "ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
