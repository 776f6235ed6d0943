"""Prediction heads that belong to an adapter.

A head turns the backbone's final hidden states into task outputs, so one bare
``AutoModel`` backbone serves many tasks: ``model.add("sst2", splice.Bottleneck(),
head=splice.heads.Classification(num_labels=2, labels=["neg", "pos"]))``. The
head is saved and loaded with its adapter and switches with it; under per-row
routing each row gets its own task's head.

Contract of a head (a small ``nn.Module``):

- ``label_names``: the batch keys holding its targets (popped before the backbone runs);
- ``prepare_inputs(inputs)``: reshape the batch for the backbone if needed (multiple choice);
- ``forward(hidden, attention_mask, inputs)``: logits from ``hidden`` ``[rows, tokens, hidden]``;
- ``loss(logits, targets)``: the training loss from the popped targets;
- ``to_dict()`` / :func:`head_from_dict`: JSON round trip (``kind`` + constructor options);
- ``build(hidden_size)``: create the parameters for a backbone of that width (the
  adapter calls it when the head joins it, so users never pass the hidden size).

The kinds: :class:`Classification` (single- and multi-label), :class:`Regression`,
:class:`TokenClassification` (tagging), :class:`MultipleChoice` and
:class:`QuestionAnswering` (extractive). Heads that pool a sequence into one
vector (``pooling="auto"``) take its first token on bidirectional encoders and its
last non-padding token on causal decoders; ``head.causal`` says which the backbone
is (set from the model's anatomy when the head is added).

Language modelling needs no splice head: attach the decoder with its LM head
(``AutoModelForCausalLM``) and add the adapter with ``head=None``; the base's own
``lm_head`` (tied or not), its shifted loss and ``generate`` are used unchanged.
``head="lm_head"`` gives the adapter its own trainable copy of that head instead.
"""

from .contract import HEADS, Head, head_from_dict, register
from .kinds import Classification, MultipleChoice, QuestionAnswering, Regression, TokenClassification, pool
from .running import HeadOutput, apply_heads

__all__ = [
    "Head", "HEADS", "head_from_dict", "register", "HeadOutput", "apply_heads", "pool",
    "Classification", "Regression", "TokenClassification", "MultipleChoice", "QuestionAnswering",
]
