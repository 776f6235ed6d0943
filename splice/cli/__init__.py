"""The ``splice`` command line: a thin layer over the Python API.

    splice train --method lora --out out/x     # train an adapter (no options: the main job)
    splice eval out/x/adapter                  # its metrics on the test split
    splice predict --adapter out/x/adapter "some text"
    splice serve --model minilm --adapters out # one backbone, many adapters, over HTTP
    splice info out/sentiment                  # what an adapter folder (or hub name@version) is
    splice convert peft_dir out/x --model base_dir --to splice
    splice merge out/lora --model base_dir --out merged_dir
    splice hub push out/sentiment sentiment --version 1.0

Each command group is one module of this package with a ``register(commands)``
function that adds its subparser and sets ``run`` (``args -> exit code``) as its
default; :data:`COMMANDS` lists the modules, in the order ``splice --help``
shows them. A new command is one more module and one more name here.

Options every command shares (``-q``) may come before or after the command's
name. Neither this package nor a command module imports torch or transformers
at module level (each ``run`` imports what it needs), so ``--help``,
``--version`` and commands that load no model answer at once.

Errors splice raises on purpose (:class:`splice.SpliceError`) and missing files
print ``error: <message>`` and exit 2, as argparse does for bad arguments;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import SpliceError
from ..version import __version__
from .common import shared_options

COMMANDS: tuple[str, ...] = ("train", "eval", "predict", "serve", "fedavg", "info", "convert", "merge", "hub")
EXIT_USAGE = 2  # bad input: argparse's code for bad arguments, and ours for every refusal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splice",
        description="Adapters for frozen Hugging Face models: train, evaluate, serve, inspect, convert, merge and "
                    "store them.",
        epilog="Run 'splice COMMAND --help' for the options of a command.",
        parents=[shared_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"splice {__version__}",
                        help="print splice's version and exit")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        importlib.import_module(f"{__name__}.{module}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error argparse already printed
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    _quiet_optional_imports()
    try:
        with _progress_bars(not args.quiet):
            return args.run(args) or 0
    except (SpliceError, FileNotFoundError, NotADirectoryError) as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` or similar, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1


# Loggers of libraries that peft and transformers import when they are installed (torchao with the `quantize`
# extra), which warn at import about parts a CPU run never uses: prebuilt CUDA extensions that do not load,
# enum registrations torch.compile no longer needs. Four such lines before every training run bury splice's
# own output; a command that uses torchao still hears its errors.
_IMPORT_NOISE = ("torchao", "torch.utils._pytree")
# bitsandbytes' int8 matmul warns on every call that its float32 input will be cast to float16 (what int8 always
# does, on every layer of every forward): with --quantize int8 it would flood a CLI run's output.
_QUANTIZED_NOISE = ("bitsandbytes.autograd._functions",)


def _quiet_optional_imports() -> None:
    """Raise the noisy libraries' loggers to ERROR for this command line run (an application's choice, not the
    library's: ``import splice`` leaves every logger as it is)."""
    for name in _IMPORT_NOISE + _QUANTIZED_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """With ``enabled`` false, Hugging Face's progress bars (loading, writing weights) off for one command.

    transformers copies huggingface_hub's setting when it is imported, so a
    command that imports it later starts quiet too; a command that never does
    (``splice hub list``) does not pay for importing it here.
    """
    if enabled:
        yield
        return
    from huggingface_hub import utils as hub_utils

    transformers_logging = sys.modules.get("transformers.utils.logging")
    before = not hub_utils.are_progress_bars_disabled()
    hub_utils.disable_progress_bars()
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging = sys.modules.get("transformers.utils.logging")
        if before:
            hub_utils.enable_progress_bars()
            if transformers_logging is not None:
                transformers_logging.enable_progress_bar()


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or 'cannot open'}: {error.filename}"
    return str(error)


__all__ = ["COMMANDS", "build_parser", "main"]
