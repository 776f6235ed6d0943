"""A real Flower federation on loopback: a SuperLink, 3 SuperNodes (one client each) and a run of splice's apps.

Each client holds a third of the training split of a built-in data set (tweet sentiment by default,
4,000 rows of it) and trains a Pfeiffer adapter on MiniLM with the same settings as ``splice train``;
only the adapter's tensors travel. After each round the server writes the global adapter to
``DIR/round-N`` (a normal splice folder) and this script prints the bytes each round moved:

    python examples/federated_flower.py --out out/flower [--rounds 2] [--clients 3] [--limit 1500]

Any TrainConfig field goes through ``--set key=value`` (``--set method=lora --set epochs=1``); a
quick check of the plumbing: ``--set model=PATH --set data=FILE`` with a tiny model and file.

The processes are Flower's own commands (``flower-superlink``, ``flower-supernode``, ``flwr run``),
on free local ports, with a throw-away ``FLWR_HOME``; every one is stopped when the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "splice-flower-example"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "splice"

[tool.flwr.app.components]
serverapp = "splice.federated.apps:server_app"
clientapp = "splice.federated.apps:client_app"

[tool.flwr.app.config]
{config}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def toml_value(value: str) -> str:
    """A --set value as TOML: numbers and booleans as they are, anything else quoted."""
    if value in ("true", "false"):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return json.dumps(value)


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop each process group this script started (a SuperLink or SuperNode and the apps it started)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def finished(out: Path, rounds: int) -> bool:
    """Whether the server has written the last round and the clients' evaluation of it."""
    try:
        facts = json.loads((out / "rounds.json").read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return False
    return any(f["round"] == rounds and "evaluate_metrics" in f for f in facts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for round-N/ adapters and rounds.json")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1500, help="rows of the data set, before the split")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig field (kebab-case) for every client, e.g. epochs=1")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the run is given up")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so that `finally` stops the federation

    out = Path(args.out).resolve()
    settings = {"num-server-rounds": str(args.rounds), "min-clients": str(args.clients), "out": str(out),
                "limit": str(args.limit), "sizes": "0.8,0.1,0.1", "epochs": "1",
                "method": "pfeiffer"}  # the smallest of the bottleneck recipes: less to send each round
    settings.update(item.split("=", 1) for item in args.set)
    work = Path(tempfile.mkdtemp(prefix="splice-flower-"))
    app = work / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(APP.format(config="\n".join(
        f"{key} = {toml_value(value)}" for key, value in settings.items())))
    ports = {name: free_port() for name in ("fleet", "serverappio", "control", *range(args.clients))}
    home = work / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{ports["control"]}"\n'
        "insecure = true\n")
    bin_dir = Path(sys.executable).parent  # Flower starts its helpers (flower-superexec, ...) from PATH
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]]),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    logs = work / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def start(name: str, *command: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        # a session of its own: Flower's processes start their own (superexec, serverapp, clientapps), and
        # stopping the session's group at the end stops those too
        process = subprocess.Popen([str(bin_dir / command[0]), *command[1:]], env=env, cwd=work,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    started = time.time()
    try:
        start("superlink", "flower-superlink", "--insecure", "--database", str(work / "state.db"),
              "--fleet-api-address", f"127.0.0.1:{ports['fleet']}",
              "--serverappio-api-address", f"127.0.0.1:{ports['serverappio']}",
              "--control-api-address", f"127.0.0.1:{ports['control']}")
        for k in range(args.clients):
            start(f"client{k}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{ports['fleet']}",
                  "--clientappio-api-address", f"127.0.0.1:{ports[k]}",
                  "--node-config", f"partition-id={k} num-partitions={args.clients}")
        print(f"federation: 1 SuperLink + {args.clients} SuperNodes on 127.0.0.1 (logs: {logs})", flush=True)
        # `flwr run` submits the run and returns; the run is over once the clients have evaluated the last round
        submit = subprocess.run([str(bin_dir / "flwr"), "run", str(app)], env=env, cwd=work, capture_output=True,
                                text=True, timeout=300)
        (logs / "flwr-run.log").write_text(submit.stdout + submit.stderr)
        if submit.returncode != 0:
            sys.exit(f"flwr run failed (exit {submit.returncode}); see {logs}")
        while not finished(out, args.rounds):
            if time.time() - started > args.timeout or processes[0].poll() is not None:
                sys.exit(f"the federation did not finish {args.rounds} rounds in {args.timeout:.0f} s; see {logs}")
            time.sleep(2)
    finally:
        stop(processes)

    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    adapter = (out / f"round-{args.rounds}" / "adapter.safetensors").stat().st_size
    print(f"adapter.safetensors: {adapter:,} bytes; {time.time() - started:.0f} s in all")
    for facts in rounds:
        moved = facts["bytes_down"] + facts["bytes_up"]
        print(f"round {facts['round']}: {facts.get('replied', 0)} clients, {facts.get('examples', 0)} examples, "
              f"{facts['bytes_down']:,} bytes down + {facts['bytes_up']:,} up = {moved / 1e6:.2f} MB "
              f"(each way {facts['bytes_up'] / (adapter * facts.get('replied', 1)):.2f} x adapter file x clients); "
              f"train loss "
              f"{facts.get('train_metrics', {}).get('train-loss', float('nan')):.4f}"
              + (f", validation accuracy {facts['evaluate_metrics']['accuracy']:.1%}"
                 if "accuracy" in facts.get("evaluate_metrics", {}) else ""))
    print(f"global adapter: {out / f'round-{args.rounds}'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
