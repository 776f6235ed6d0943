"""A splice head written for peft: as the task model's own classifier, saved as ``modules_to_save``.

peft has no heads of its own. A classifier trained with a peft adapter is the
task model's (``BertForSequenceClassification``'s ``classifier``, and for BERT
also its ``bert.pooler``), listed in ``modules_to_save`` and loaded over the
task model's freshly initialised one. A splice head on a bare backbone
(``AutoModel``, what ``splice train`` trains on) can be written that way when the
family's task model computes exactly what the head does from the same hidden
states; the adapter's own module paths then move under the task model's base
prefix (``encoder.layer.0…`` becomes ``bert.encoder.layer.0…``). Loaded with
``AutoModelForSequenceClassification.from_pretrained(base, num_labels=N)`` (or
``…ForTokenClassification``) and ``PeftModel.from_pretrained``, it gives the
logits splice gives.

What matches, per family (the tables below; checked against peft in the tests):

- sequence classification and regression: a head with ``layers=2`` (dense, the
  family's activation, output; ``splice train``'s default) pooling the first
  token (``pooling="cls"``, or ``"auto"`` on an encoder). The task models take
  token 0, which is the first real token with right padding, as these families'
  tokenizers pad;
- token classification (tagging): a head with ``layers=1`` (``splice train
  --task tagging``'s default), the task model's linear ``classifier``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import AdapterError

if TYPE_CHECKING:
    from ..adapter import Adapter
    from ..anatomy import Anatomy

# model_type -> how its *ForSequenceClassification turns token 0's hidden state into logits: the activation
# between its dense layer and its output layer, their module paths, and the modules that hold them ("{base}":
# where the task model keeps the backbone, e.g. "bert").
_SEQUENCE = {
    "bert": ("tanh", "{base}.pooler.dense", "classifier", ("{base}.pooler", "classifier")),
    "roberta": ("tanh", "classifier.dense", "classifier.out_proj", ("classifier",)),
    "xlm-roberta": ("tanh", "classifier.dense", "classifier.out_proj", ("classifier",)),
    "electra": ("gelu", "classifier.dense", "classifier.out_proj", ("classifier",)),
    "distilbert": ("relu", "pre_classifier", "classifier", ("pre_classifier", "classifier")),
}
# model types whose *ForTokenClassification is one linear "classifier" on every token's hidden state
_TOKEN = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")
# peft methods whose adapters sit on the backbone's weights, so they work unchanged inside the task model
_METHODS = ("lora", "ia3", "dora", "vera")


@dataclass(frozen=True)
class TaskHead:
    """A splice head as the modules of the task model peft will load the adapter into."""

    task_type: str                    # peft's: "SEQ_CLS" or "TOKEN_CLS"
    task_class: str                   # the Auto class to load the base with (for the user)
    base_prefix: str                  # the backbone's path in the task model, with a dot: "bert."
    modules_to_save: list[str]        # task-model paths of the modules the head replaces
    modules: tuple[str, ...]          # the task model's module paths outside the backbone (the head's)
    tensors: dict[str, torch.Tensor]  # task-model parameter paths -> the head's weights


def task_head(anatomy: Anatomy, adapter: Adapter, name: str) -> TaskHead:
    """``adapter``'s splice head as its task model's classifier, or an error saying how to get one that is."""
    head = adapter.task_head
    kind = getattr(head, "kind", None)
    model_type = getattr(getattr(anatomy.model, "config", None), "model_type", None)
    keep = "or keep it in splice's format (format='splice')"
    if kind not in ("classification", "regression", "token_classification"):
        raise AdapterError(f"Adapter {name!r} has a splice {kind} head, which peft cannot carry (it writes "
                           f"classification, regression and tagging heads); {keep}.")
    if adapter.config.method not in _METHODS:
        raise AdapterError(
            f"Adapter {name!r} is a {adapter.config.method} adapter with a splice head; peft carries a head only as "
            f"the task model's classifier beside a LoRA, DoRA, VeRA or IA3 adapter. Train one with splice train "
            f"--method lora (or dora, vera, ia3), {keep}."
        )
    if getattr(anatomy.model, "base_model", None) is not anatomy.model:
        raise AdapterError(
            f"Adapter {name!r} has a splice head on top of {type(anatomy.model).__name__}, which is not a bare "
            f"backbone; peft can carry a splice head only for adapters trained on AutoModel (as splice train does), "
            f"{keep}."
        )
    token = kind == "token_classification"
    families = _TOKEN if token else tuple(_SEQUENCE)
    if model_type not in families:
        raise AdapterError(
            f"Adapter {name!r} has a splice {kind} head on a {model_type!r} model; splice writes such heads for peft "
            f"only where the task model computes the same ({', '.join(families)}). Train on one of those, {keep}."
        )
    base = anatomy.model.base_model_prefix
    linears = [part for part in head.mlp if isinstance(part, nn.Linear)]
    family = type(anatomy.model).__name__.removesuffix("Model")
    if token:
        task_type, task_class = "TOKEN_CLS", "AutoModelForTokenClassification"
        paths = saved = ["classifier"]
        computes = "one linear classifier on each token's hidden state"
        fixes = [] if head.layers == 1 else [f"layers={head.layers} (train with --head-layers 1, the default for "
                                             "tagging)"]
    else:
        activation, dense, output, saved = _SEQUENCE[model_type]
        task_type, task_class = "SEQ_CLS", "AutoModelForSequenceClassification"
        paths, saved = [path.format(base=base) for path in (dense, output)], [path.format(base=base) for path in saved]
        computes = f"dense, {activation}, output on the first token's hidden state"
        fixes = [] if head.layers == 2 else [f"layers={head.layers} (train with --head-layers 2, the default)"]
        if head.resolved_pooling != "cls":
            fixes.append(f"pooling={head.resolved_pooling!r} (train with --pooling cls, or auto, the default)")
        if head.activation != activation:
            fixes.append(f"activation={head.activation!r} (splice train's heads use tanh; build this one in Python "
                         f"with splice.heads.{type(head).__name__}(..., activation={activation!r}))")
    if fixes:
        task = "ForTokenClassification" if token else "ForSequenceClassification"
        raise AdapterError(
            f"Adapter {name!r} has a splice {kind} head that {family}{task}, the task model peft loads it into, "
            f"cannot compute: that computes {computes}, and this head has {'; '.join(fixes)}. Or keep the "
            "adapter in splice's format (format='splice')."
        )
    tensors = {f"{path}.{param}": getattr(linear, param) for path, linear in zip(paths, linears)
               for param in ("weight", "bias")}
    return TaskHead(task_type, task_class, f"{base}.", saved, tuple(dict.fromkeys([*saved, *paths])), tensors)

