"""``splice merge ADAPTER --model MODEL_PATH --out DIR``: fold an adapter into the base and save that model.

The adapter (of a mergeable method: LoRA, IA3, BitFit, ...) is loaded and merged
with ``model.merge``, the hooks are removed with ``model.detach()``, and the merged base is written with
``save_pretrained`` into a temporary folder that is then renamed to DIR, so an
interrupted merge leaves nothing half-written. An adapter's own copy of a base
head (``head="classifier"``, peft's ``modules_to_save``) replaces that head in
the saved model; a splice prediction head is not part of any base model, so an
adapter with one is refused. Tokenizer files beside the base are copied along.
With ``--quantize`` the base is loaded as the adapter was trained on it (e.g. nf4) and dequantized to
float32 before the merge, so the merge is exact and the saved model is a float model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpliceError
from .common import Steps, adapter_path, add_command, add_model_options, add_quantize_options, attach_base, load_base

if TYPE_CHECKING:
    import torch

# Files of the base folder that are not the model itself but belong with it (tokenizer, processor).
COMPANIONS = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "preprocessor_config.json", "chat_template.jinja",
)
MODEL_MARKER = "config.json"


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "merge",
        help="fold a mergeable adapter (LoRA, IA3, BitFit, ...) into the base and save the merged model",
        description="Load ADAPTER (a splice, peft or AdapterHub folder, or a hub name@version) into the base at "
                    "--model, merge it into the weights, and save_pretrained the merged model to --out. Only "
                    "adapters of mergeable methods (LoRA, IA3, BitFit, ...) merge.")
    parser.add_argument("adapter", metavar="ADAPTER",
                        help="adapter folder (or a splice train run folder), or name@version in the hub")
    add_model_options(parser)
    add_quantize_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the merged model")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a model folder already at --out (never a folder without config.json)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out, source = Path(args.out), Path(args.model)
    if out.exists() and out.resolve() == source.resolve():
        raise SpliceError(f"--out {out} is the base model's own folder; write the merged model somewhere else.")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise SpliceError(f"{out} already holds files; choose a new folder, or pass --overwrite to replace a model "
                          "saved there.")
    from ..checkpoint import write_folder

    steps = Steps(args.quiet)
    model = _quantized_then_float(args, steps) if args.quantize else attach_base(args, steps)
    with steps(f"reading {args.adapter}"):
        name = model.load(adapter_path(args.adapter))
    head = model.adapters[name].head_spec()
    if isinstance(head, dict):
        raise SpliceError(
            f"Adapter {name!r} has a splice {head.get('kind', 'prediction')} head, which is not part of the base "
            "model, so a merged model could not reproduce its outputs. Serve it as an adapter instead."
        )
    with steps(f"merging {name!r} into the base"):
        model.merge(name)
        head_module = model.adapters[name].head if head is not None else None
        base = model.detach()
        if head_module is not None:
            _copy_head(base, head, head_module, name)
    with steps(f"saving the merged model to {out}"):
        write_folder(out, lambda staging: _save(base, source, staging), marker=MODEL_MARKER)
    print(out)
    return 0


def _quantized_then_float(args: argparse.Namespace, steps: Steps):
    """The base as the adapter was trained on it (stored as ``--quantize``), dequantized to float32 and
    attached, so the merge is exact and the saved model is an ordinary float model."""
    from ..adapted import attach
    from ..quantize import dequantize_model

    with steps(f"loading {args.model} ({args.quantize}) and dequantizing it to float32"):
        return attach(dequantize_model(load_base(args.model, args.model_class, args.quantize, args.compute_dtype)))


def _copy_head(base: torch.nn.Module, path: str, head: torch.nn.Module, name: str) -> None:
    """Put the adapter's trained copy of the base module ``path`` in place of the original."""
    import torch

    target = base.get_submodule(path)
    own = {id(p) for p in target.parameters()}
    shared = [key for key, p in base.named_parameters(remove_duplicate=False)
              if id(p) in own and not key.startswith(f"{path}.")]
    if shared:
        raise SpliceError(
            f"Adapter {name!r} carries its own {path}, whose weights the base shares with {shared[0]} (tied "
            "embeddings); the merged model cannot hold both. Keep it as an adapter instead."
        )
    with torch.no_grad():
        target.load_state_dict(head.state_dict())


def _save(base: torch.nn.Module, source: Path, staging: Path) -> None:
    base.save_pretrained(str(staging))
    for file in COMPANIONS:
        if (source / file).is_file():
            shutil.copy2(source / file, staging / file)
