"""The head kinds: classification, regression, token classification, multiple choice, question answering."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError, SpliceError
from ..methods.base import ACTIVATIONS, MAX_MAGNITUDE
from .contract import Head, register

POOLINGS = ("auto", "cls", "mean", "last")
# Bounds on a head's size, so that a typo or a hostile adapter.json (num_labels 10**8) is refused by name
# instead of failing as an allocation of hundreds of gigabytes: counts (classes, scores, choices, width) as
# for method options, and the MLP's depth (heads use 1 or 2 layers).
MAX_LAYERS = 16


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """One vector per row of ``hidden`` ``[rows, tokens, width]``.

    ``cls``: the first non-padding token (position 0 unless the batch is left-padded);
    ``last``: the last non-padding token (works with left and right padding);
    ``mean``: the mean over non-padding tokens. Without a mask every token counts.
    """
    rows, tokens = hidden.shape[:2]
    if attention_mask is None:
        if how == "mean":
            return hidden.mean(dim=1)
        return hidden[:, 0 if how == "cls" else -1]
    if attention_mask.shape != (rows, tokens):
        raise SpliceError(
            f"A pooling head needs a [batch, tokens] attention_mask matching the hidden states "
            f"({rows} x {tokens}), got shape {list(attention_mask.shape)}."
        )
    present = attention_mask.to(hidden.device) != 0
    if how == "mean":
        weights = present.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    positions = torch.arange(tokens, device=hidden.device).expand(rows, tokens)
    if how == "cls":
        index = torch.where(present, positions, tokens).amin(dim=1).clamp(max=tokens - 1)
    else:
        index = torch.where(present, positions, -1).amax(dim=1).clamp(min=0)
    return hidden[torch.arange(rows, device=hidden.device), index]


def _mlp(width: int, out: int, layers: int, dropout: float, activation: str) -> nn.Sequential:
    """``layers - 1`` times dropout → dense → activation, then dropout → output projection."""
    parts: list[nn.Module] = []
    for _ in range(layers - 1):
        parts += [nn.Dropout(dropout), nn.Linear(width, width), ACTIVATIONS[activation]()]
    parts += [nn.Dropout(dropout), nn.Linear(width, out)]
    for part in parts:  # the usual transformer head init: small normal weights, zero bias
        if isinstance(part, nn.Linear):
            nn.init.normal_(part.weight, std=0.02)
            nn.init.zeros_(part.bias)
    return nn.Sequential(*parts)


def _int(owner: str, name: str, value: Any, high: int, low: int = 1, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{owner}.{name} must be an integer >= {low} and <= {high:,}, got {value!r}.")


def _choice(owner: str, name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{owner}.{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def _probability(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{owner}.{name} must be a number in [0, 1), got {value!r}.")


def _optional_bool(owner: str, name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{owner}.{name} must be True, False or None, got {value!r}.")


def _labels(owner: str, labels: Any, num_labels: int) -> tuple[str, ...] | None:
    if labels is None:
        return None
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise ConfigError(f"{owner}.labels must be a list of class names (strings), got {labels!r}.")
    if len(labels) != num_labels:
        raise ConfigError(f"{owner}.labels names {len(labels)} classes but num_labels is {num_labels}: "
                          f"give one name per class.")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{owner}.labels has repeated names: {list(labels)}.")
    return tuple(labels)


class MLPHead(Head):
    """Shared machinery: a small MLP (``layers``, ``dropout``, ``activation``) built on :meth:`build`.

    Subclasses set ``out_features`` before calling ``__init__`` and extend :meth:`options`
    (their constructor arguments, for :meth:`to_dict`); ``hidden_size`` may be given up
    front, else the adapter supplies it through :meth:`build`.
    """

    out_features: int = 1

    def __init__(self, *, layers: int, dropout: float, activation: str, hidden_size: int | None) -> None:
        super().__init__()
        name = type(self).__name__
        _int(name, "layers", layers, MAX_LAYERS)
        _probability(name, "dropout", dropout)
        _choice(name, "activation", activation, tuple(ACTIVATIONS))
        _int(name, "hidden_size", hidden_size, MAX_MAGNITUDE, none_ok=True)
        self.layers, self.dropout, self.activation = layers, float(dropout), activation
        self.hidden_size: int | None = None
        self.mlp: nn.Sequential | None = None
        if hidden_size is not None:
            self.build(hidden_size)

    def build(self, hidden_size: int) -> None:
        _int(type(self).__name__, "hidden_size", hidden_size, MAX_MAGNITUDE)
        if self.hidden_size is not None:
            if hidden_size != self.hidden_size:
                raise ConfigError(
                    f"This {type(self).__name__} head was built for hidden size {self.hidden_size}, but the "
                    f"backbone's is {hidden_size}. Use a fresh head for each adapter."
                )
            return
        self.hidden_size = hidden_size
        self.mlp = _mlp(hidden_size, self.out_features, self.layers, self.dropout, self.activation)

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """Run the MLP on ``states`` ``[..., hidden]`` (in the head's dtype)."""
        if self.mlp is None:
            raise SpliceError(
                f"This {type(self).__name__} head has no parameters yet: add it to a model with "
                f"model.add(name, config, head=...), or pass hidden_size=... when creating it."
            )
        if states.shape[-1] != self.hidden_size:
            raise SpliceError(f"{type(self).__name__} head expects hidden states of width {self.hidden_size}, "
                              f"got {states.shape[-1]}.")
        weight = self.mlp[-1].weight
        return self.mlp(states.to(weight.dtype))

    def options(self) -> dict[str, Any]:
        return {"layers": self.layers, "dropout": self.dropout, "activation": self.activation}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.options(), "hidden_size": self.hidden_size}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())


class PooledHead(MLPHead):
    """An MLP on one pooled vector per sequence (``pooling``; ``causal`` resolves ``"auto"``)."""

    def __init__(self, *, pooling: str, causal: bool | None, **mlp) -> None:
        name = type(self).__name__
        _choice(name, "pooling", pooling, POOLINGS)
        _optional_bool(name, "causal", causal)
        super().__init__(**mlp)
        self.pooling = pooling
        self.causal = causal  # set from the backbone's anatomy when the head is added

    @property
    def resolved_pooling(self) -> str:
        """``pooling`` with ``"auto"`` resolved: last token on a causal backbone, else the first."""
        if self.pooling != "auto":
            return self.pooling
        return "last" if self.causal else "cls"

    def pooled_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.project(pool(hidden, attention_mask, self.resolved_pooling))

    def forward(self, hidden, attention_mask, inputs):
        return self.pooled_logits(hidden, attention_mask)

    def options(self) -> dict[str, Any]:
        return {"pooling": self.pooling, **super().options(), "causal": self.causal}


def _target(targets: Mapping[str, torch.Tensor], name: str, logits: torch.Tensor) -> torch.Tensor:
    return targets[name].to(logits.device)


@register
class Classification(PooledHead):
    """Sequence classification: logits ``[batch, num_labels]``.

    Single-label (cross-entropy; ``labels`` targets are class ids, -100 ignored) or
    ``multi_label=True`` (binary cross-entropy with logits; targets ``[batch, num_labels]``
    of 0/1 floats). ``labels`` names the classes, in order, for prediction code.
    ``layers=2``: dropout → dense → activation → dropout → output (the usual
    RoBERTa / AdapterHub head); ``layers=1``: dropout → output.
    """

    kind = "classification"

    def __init__(self, num_labels: int, labels: list[str] | None = None, multi_label: bool = False,
                 pooling: str = "auto", layers: int = 2, dropout: float = 0.1, activation: str = "tanh",
                 causal: bool | None = None, hidden_size: int | None = None) -> None:
        _int("Classification", "num_labels", num_labels, MAX_MAGNITUDE)
        if not isinstance(multi_label, bool):
            raise ConfigError(f"Classification.multi_label must be True or False, got {multi_label!r}.")
        if num_labels < 2 and not multi_label:
            raise ConfigError(
                f"Classification(num_labels={num_labels}) needs at least 2 classes for single-label "
                "classification; for one score use splice.heads.Regression(), or multi_label=True for one "
                "yes/no label."
            )
        self.num_labels, self.multi_label = num_labels, multi_label
        self.labels = _labels("Classification", labels, num_labels)
        self.out_features = num_labels
        super().__init__(pooling=pooling, causal=causal, layers=layers, dropout=dropout, activation=activation,
                         hidden_size=hidden_size)

    def loss(self, logits, targets):
        labels = _target(targets, "labels", logits)
        if self.multi_label:
            if labels.shape != logits.shape:
                raise SpliceError(f"Multi-label classification needs labels of shape {list(logits.shape)} "
                                  f"(one 0/1 per class), got {list(labels.shape)}.")
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).long())

    def options(self):
        return {"num_labels": self.num_labels, "labels": None if self.labels is None else list(self.labels),
                "multi_label": self.multi_label, **super().options()}


@register
class Regression(PooledHead):
    """Sequence regression: ``[batch, num_outputs]`` scores, mean-squared-error loss on float ``labels``."""

    kind = "regression"

    def __init__(self, num_outputs: int = 1, pooling: str = "auto", layers: int = 2, dropout: float = 0.1,
                 activation: str = "tanh", causal: bool | None = None, hidden_size: int | None = None) -> None:
        _int("Regression", "num_outputs", num_outputs, MAX_MAGNITUDE)
        self.num_outputs = self.out_features = num_outputs
        super().__init__(pooling=pooling, causal=causal, layers=layers, dropout=dropout, activation=activation,
                         hidden_size=hidden_size)

    def loss(self, logits, targets):
        labels = _target(targets, "labels", logits)
        if labels.numel() != logits.numel():
            raise SpliceError(f"Regression needs {self.num_outputs} target(s) per row, got labels of shape "
                              f"{list(labels.shape)} for logits {list(logits.shape)}.")
        return nn.functional.mse_loss(logits, labels.reshape(logits.shape).to(logits.dtype))

    def options(self):
        return {"num_outputs": self.num_outputs, **super().options()}


@register
class TokenClassification(MLPHead):
    """Tagging (NER, POS): logits ``[batch, tokens, num_labels]``; cross-entropy ignoring label -100."""

    kind = "token_classification"

    def __init__(self, num_labels: int, labels: list[str] | None = None, dropout: float = 0.1, layers: int = 1,
                 activation: str = "tanh", hidden_size: int | None = None) -> None:
        _int("TokenClassification", "num_labels", num_labels, MAX_MAGNITUDE, low=2)
        self.num_labels = self.out_features = num_labels
        self.labels = _labels("TokenClassification", labels, num_labels)
        super().__init__(layers=layers, dropout=dropout, activation=activation, hidden_size=hidden_size)

    def forward(self, hidden, attention_mask, inputs):
        return self.project(hidden)

    def loss(self, logits, targets):
        labels = _target(targets, "labels", logits)
        if labels.shape != logits.shape[:2]:
            raise SpliceError(f"Token classification needs one label per token, shape {list(logits.shape[:2])}"
                              f" (-100 for tokens to ignore), got {list(labels.shape)}.")
        return nn.functional.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1).long(),
                                           ignore_index=-100)

    def options(self):
        return {"num_labels": self.num_labels, "labels": None if self.labels is None else list(self.labels),
                **super().options()}


@register
class MultipleChoice(PooledHead):
    """Multiple choice (SWAG, HellaSwag): batches ``[batch, choices, tokens]``, logits ``[batch, choices]``.

    :meth:`prepare_inputs` flattens the choices into rows for the backbone; each
    choice's pooled state gets one score; the loss is cross-entropy over choices with
    ``labels`` the index of the right one. ``num_choices`` is needed only when the
    batch arrives already flattened to ``[batch * choices, tokens]``.
    """

    kind = "multiple_choice"
    FLATTEN = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")

    def __init__(self, num_choices: int | None = None, pooling: str = "auto", layers: int = 2,
                 dropout: float = 0.1, activation: str = "tanh", causal: bool | None = None,
                 hidden_size: int | None = None) -> None:
        _int("MultipleChoice", "num_choices", num_choices, MAX_MAGNITUDE, low=2, none_ok=True)
        self.num_choices = num_choices
        self._seen_choices: int | None = None  # from the last prepare_inputs, consumed by forward
        super().__init__(pooling=pooling, causal=causal, layers=layers, dropout=dropout, activation=activation,
                         hidden_size=hidden_size)

    def prepare_inputs(self, inputs):
        ids = inputs.get("input_ids")
        if ids is None:
            ids = inputs.get("inputs_embeds")
            nested = ids is not None and ids.dim() == 4
        else:
            nested = ids.dim() == 3
        self._seen_choices = None
        if not nested:
            return inputs
        choices = ids.shape[1]
        if self.num_choices is not None and choices != self.num_choices:
            raise SpliceError(f"MultipleChoice(num_choices={self.num_choices}) got a batch with {choices} choices.")
        self._seen_choices = choices
        out = dict(inputs)
        for key in self.FLATTEN:
            value = out.get(key)
            if isinstance(value, torch.Tensor):
                out[key] = value.flatten(0, 1)
        return out

    def forward(self, hidden, attention_mask, inputs):
        choices, self._seen_choices = self._seen_choices or self.num_choices, None
        if choices is None:
            raise SpliceError("MultipleChoice needs inputs shaped [batch, choices, tokens], or num_choices=... "
                              "for batches already flattened to [batch * choices, tokens].")
        if hidden.shape[0] % choices:
            raise SpliceError(f"MultipleChoice: {hidden.shape[0]} rows do not split into groups of {choices} "
                              "choices.")
        return self.pooled_logits(hidden, attention_mask).view(-1, choices)

    def loss(self, logits, targets):
        return nn.functional.cross_entropy(logits, _target(targets, "labels", logits).view(-1).long())

    def options(self):
        return {"num_choices": self.num_choices, **super().options()}


@register
class QuestionAnswering(MLPHead):
    """Extractive QA (SQuAD): start/end logits ``[batch, tokens, 2]``.

    Targets ``start_positions`` / ``end_positions`` (token indices); the loss is the mean
    of the two cross-entropies, and a position outside the sequence is ignored (as in
    Hugging Face's QA models: positions are clamped to ``tokens``, which is the ignore index).
    """

    kind = "question_answering"
    label_names = ("start_positions", "end_positions")

    def __init__(self, layers: int = 1, dropout: float = 0.0, activation: str = "tanh",
                 hidden_size: int | None = None) -> None:
        self.out_features = 2
        super().__init__(layers=layers, dropout=dropout, activation=activation, hidden_size=hidden_size)

    def forward(self, hidden, attention_mask, inputs):
        return self.project(hidden)

    def loss(self, logits, targets):
        if not all(name in targets for name in self.label_names):
            raise SpliceError("QuestionAnswering needs both start_positions and end_positions to compute a loss.")
        tokens = logits.shape[1]
        losses = []
        for column, name in enumerate(self.label_names):
            positions = _target(targets, name, logits).reshape(-1).long().clamp(0, tokens)
            losses.append(nn.functional.cross_entropy(logits[..., column], positions, ignore_index=tokens))
        return (losses[0] + losses[1]) / 2
