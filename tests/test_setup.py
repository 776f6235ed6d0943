"""The set-up is reproducible: scripts/setup.sh installs exactly requirements/lock.txt (CPU torch, no CUDA wheels),
the lock still fits pyproject.toml's ranges, and the newest-releases command exists apart from .venv."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
SCRIPTS = ROOT / "scripts"


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a requirements file in which every requirement must be pinned with ``==``."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"{path.name}: {line!r} is not pinned with =="
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def splice_requirements() -> list[Requirement]:
    """splice's dependencies plus those of the extras the lock is compiled with (scripts/venv.sh names them)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r"SPLICE_EXTRAS=\(([^)]*)\)", (SCRIPTS / "venv.sh").read_text()).group(1).split()
    assert set(extras) == set(project["optional-dependencies"]), "the lock must cover every extra the tests use"
    return [Requirement(r) for r in project["dependencies"] + sum((project["optional-dependencies"][e]
                                                                  for e in extras), [])]


def test_setup_installs_the_lock_and_nothing_unpinned():
    setup = (SCRIPTS / "setup.sh").read_text()
    shared = (SCRIPTS / "venv.sh").read_text()
    assert "venv_pip .venv -r requirements/lock.txt" in setup
    assert "-r requirements/assets.txt" in shared and '-r "$pins"' in shared
    installs = [line for line in (setup + shared).splitlines() if re.match(r"\s*venv_pip ", line)]
    for line in installs:  # each install names a pinned file, or is splice itself without its dependencies
        assert "-r " in line or "--no-deps -e ." in line, f"an install outside the lock: {line.strip()}"


def test_the_lock_pins_cpu_torch_and_no_cuda_wheels():
    locked = pins(REQUIREMENTS / "lock.txt")
    assert locked["torch"] in ("2.13.0", "2.13.0+cpu")
    assert pins(REQUIREMENTS / "torch.txt") == {"torch": "2.13.0"}
    cuda = [name for name in locked if name.startswith(("nvidia-", "cuda-"))]
    assert cuda == [], f"the lock would install CUDA wheels: {cuda}"


def test_the_lock_fits_pyproject():
    """A range changed in pyproject.toml without `bash scripts/lock.sh` leaves a lock that no longer fits it."""
    locked = pins(REQUIREMENTS / "lock.txt")
    for requirement in splice_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is missing from requirements/lock.txt: run bash scripts/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements/lock.txt pins {name}=={locked[name]}, outside pyproject's {requirement}: "
            "run bash scripts/lock.sh")
    for name in ("schemathesis", "openai"):  # the server's contract fuzzer and official client
        assert name in locked


def test_assets_and_the_4_57_overlay_are_pinned():
    assert len(pins(REQUIREMENTS / "assets.txt")) == 5
    overlay = pins(REQUIREMENTS / "transformers-4.57.txt")
    assert overlay["transformers"] == "4.57.6"


def test_the_newest_command_keeps_to_its_own_environment():
    newest = "\n".join(line for line in (SCRIPTS / "test-newest.sh").read_text().splitlines()
                       if not line.lstrip().startswith("#"))
    assert "venv=.venv-newest" in newest and not re.search(r"\.venv(?![-\w])", newest)
    assert "-c requirements/torch.txt" in newest and "--upgrade-strategy eager" in newest
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/.venv-newest/" in ignored and "/.venv-lock/" in ignored


def test_readme_documents_the_lock_and_the_newest_command():
    readme = (ROOT / "README.md").read_text()
    contributing = readme[readme.index("## Contributing"):]
    for command in ("bash scripts/test-newest.sh", "bash scripts/lock.sh", "requirements/lock.txt",
                    "transformers-4.57"):
        assert command in contributing, f"README's Contributing section does not mention {command}"


def test_newest_versions_names_what_moved_from_the_lock(tmp_path):
    import torch

    lock = tmp_path / "lock.txt"
    lock.write_text(f"torch=={torch.__version__}\n    # via x\npeft==0.0.1\n")
    printed = subprocess.run([sys.executable, str(SCRIPTS / "newest_versions.py"), str(lock)],
                             capture_output=True, text=True, check=True).stdout
    assert f"torch {torch.__version__}" in printed.splitlines()[0]
    assert "peft 0.0.1 -> " in printed and "torch" not in printed.splitlines()[1]
