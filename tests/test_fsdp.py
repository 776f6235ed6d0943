"""splice adapters under FSDP2 (``torch.distributed.fsdp.fully_shard``, which accelerate's FSDP2 applies), with two
CPU processes on gloo: only the adapter trains, the base stays bit-identical, and the sharded run's adapter is
the one a single process trains on both ranks' rows at once (FSDP averages the ranks' gradients).

FSDP1 (``FullyShardedDataParallel``) refuses the CPU in torch 2.13 ("FSDP needs a non-CPU accelerator
device"), and accelerate only turns FSDP on for accelerator devices (a CPU run stays MULTI_CPU), so the
CPU check drives FSDP2 directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fsdp_worker

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def test_adapter_trains_under_fsdp2_on_two_cpu_processes_as_one_process_does(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(Path(fsdp_worker.__file__)), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world"] == 2 and result["sharded"]
    assert result["base_changed"] == []
    assert result["trainable"] and all(n.startswith("adapters.task.") for n in result["trainable"])

    reference = fsdp_worker.adapted()
    both = torch.cat([fsdp_worker.batch(0), fsdp_worker.batch(1)])  # equal rows and tokens: the mean of the means
    fsdp_worker.train(reference, both)
    expected = {n: p.detach() for n, p in reference.named_parameters() if p.requires_grad}
    got = load_file(str(tmp_path / "adapter.safetensors"))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-4)
    start = {n: p for n, p in fsdp_worker.adapted().named_parameters() if p.requires_grad}
    assert all(not torch.equal(got[n], start[n]) for n in got), "every adapter tensor must have trained"
