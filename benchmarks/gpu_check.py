"""Checks that need a CUDA GPU (the test suite runs the kernels through Triton's CPU interpreter only).

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --json gpu_check.json    # also every check as JSON (benchmarks/gpu_suite.py)

1. Every kernel case of ``tests/kernel_cases.py``, compiled for the GPU (bf16 with native bf16 dots).
2. A mixed batch through a small Llama: Triton kernels vs the PyTorch reference vs each row alone.
3. No host synchronisation inside routed hooks (``torch.cuda.set_sync_debug_mode("error")``).
4. A mixed decode batch captured in a CUDA graph, replayed after routing another mix into it, one adapter on
   every row, and an adapter loaded after the capture (``reserve`` + ``freeze_routing`` + ``route``).

Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import splice  # noqa: E402
from splice import kernels  # noqa: E402
from splice.routing import Routed  # noqa: E402

CONFIGS = {"lora": splice.LoRA(r=16, alpha=32, targets="all-linear"), "lora8": splice.LoRA(r=8, targets=["q", "v"]),
           "pfeiffer": splice.Bottleneck(reduction_factor=16), "houlsby": splice.Bottleneck(placement="houlsby", r=24),
           "gelu": splice.Bottleneck(r=32, non_linearity="gelu"), "ia3": splice.IA3(), "bitfit": splice.BitFit()}
checks: list[dict] = []  # every check reported, in order: name, ok, detail


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    checks.append(dict(name=name, ok=ok, detail=detail))


def kernel_cases() -> None:
    env = {**os.environ, "SPLICE_KERNEL_DEVICE": "cuda", "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "kernel_cases.py")], env=env, capture_output=True,
                          text=True)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    report("kernel cases ran", bool(results), done.stderr[-2000:] if not results else f"({len(results)} cases)")
    for result in results:
        if not result["ok"]:
            report(f"kernel case {result['case']}", False, result["error"][:300])


def model(dtype: torch.dtype, adapters_too: bool = True) -> splice.AdaptedModel:
    """A small Llama in ``dtype`` with every config of CONFIGS; ``adapters_too=False`` keeps the adapters in
    float32 (as ``add`` and ``load`` make them on any base, like peft's adapters)."""
    config = transformers.LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=3,
                                      num_attention_heads=8, num_key_value_heads=2, vocab_size=1000, use_cache=False)
    torch.manual_seed(0)
    base = transformers.AutoModel.from_config(config, attn_implementation="sdpa").cuda().eval()
    adapted = splice.attach(base if adapters_too else base.to(dtype))
    for seed, (name, config) in enumerate(CONFIGS.items()):
        adapted.add(name, config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in adapted.adapters[name].parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(p.device) * 0.05)
    return adapted.to(dtype) if adapters_too else adapted


def difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest value (bf16 hidden states reach tens)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1)).item()


def routed_model(dtype: torch.dtype, tokens: int) -> None:
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # Triton vs the reference, on the same batch
    batched = 1e-4 if dtype == torch.float32 else 2e-2  # a batch vs one row: the base's own kernels differ a little
    adapted = model(dtype)
    names = [*CONFIGS, "__base__", "lora", "pfeiffer"]
    ids = torch.randint(3, 1000, (len(names), tokens), device="cuda")
    with torch.no_grad():
        fast = adapted(input_ids=ids, adapter_names=names)[0]
        kernels.set_backend("reference")
        plain = adapted(input_ids=ids, adapter_names=names)[0]
        kernels.set_backend("auto")
        diff = difference(fast, plain)
        report(f"triton vs reference {dtype} x{tokens} tokens", diff <= tolerance, f"(relative diff {diff:.1e})")
        worst = 0.0
        for row, name in enumerate(names):
            adapted.disable() if name == "__base__" else adapted.activate(name)
            alone = adapted(input_ids=ids[row : row + 1])[0]
            worst = max(worst, difference(fast[row : row + 1], alone))
        report(f"mixed rows equal rows alone {dtype} x{tokens} tokens", worst <= batched,
               f"(relative diff {worst:.1e})")
        adapted.disable()
        adapted(input_ids=ids, adapter_names=names)  # warm, and leave the hooks on the resident plan
        original = Routed._run

        def strict(self, *args, **kwargs):  # only splice's routed sites: the model itself may synchronise
            torch.cuda.set_sync_debug_mode("error")
            try:
                return original(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        Routed._run = strict
        try:
            adapted.base(input_ids=ids)
            report(f"no host sync in routed hooks {dtype} x{tokens}", True)
        except RuntimeError as error:
            report(f"no host sync in routed hooks {dtype} x{tokens}", False, str(error)[:300])
        finally:
            Routed._run = original


def graph_replay() -> None:
    """One decode graph, captured after reserve + freeze_routing, serves every later batch: another mix,
    every row on one adapter, and an adapter loaded after the capture (into a reserved slot)."""
    import tempfile

    adapted = model(torch.bfloat16, adapters_too=False)  # a loaded adapter (float32) joins their banks
    first = ["lora", "pfeiffer", "ia3", "__base__"] * 8
    ids = torch.randint(3, 1000, (len(first), 1), device="cuda")
    adapted.reserve(adapters=len(adapted.adapters) + 2)
    adapted.freeze_routing()
    with torch.no_grad():
        adapted.route(first)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            adapted.base(input_ids=ids)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = adapted.base(input_ids=ids)[0]
        with tempfile.TemporaryDirectory() as folder:
            adapted.save("lora", folder)
            adapted.load(folder, name="late")  # after the capture: its slots are written now
        gen = torch.Generator().manual_seed(9)
        for p in adapted.adapters["late"].parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.device, p.dtype) * 0.05)  # in place: refreshed per batch
        for label, names in (("another mix", ["houlsby", "lora8", "__base__", "bitfit"] * 8),
                             ("one adapter", ["gelu"] * 32), ("a late adapter", ["late", "lora", "ia3", "late"] * 8)):
            expected = adapted(input_ids=ids, adapter_names=names)[0].clone()
            adapted.route(names)  # new rows into the same index tensor
            graph.replay()
            diff = difference(out, expected)
            report(f"CUDA graph replays {label}", diff <= 2e-2, f"(relative diff {diff:.1e})")
    adapted.unfreeze_routing()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="also write the device and every check to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU; the CPU checks are in the test suite (tests/test_kernels.py).")
        return 1
    import triton

    device = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    print(f"{device['device']}; torch {device['torch']}; triton {device['triton']}")
    kernel_cases()
    for dtype in (torch.float32, torch.bfloat16):
        for tokens in (1, 96):  # decode-like (gather-GEMV) and prefill-like (segment-GEMM)
            routed_model(dtype, tokens)
    graph_replay()
    failed = [c["name"] for c in checks if not c["ok"]]
    print("all GPU checks passed" if not failed else f"{len(failed)} GPU check(s) failed")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(**device, checks=checks), indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
