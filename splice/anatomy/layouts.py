"""The role table: where each role sits in the blocks of each known ``model_type``.

A role spec is a dotted path inside a block, a fused projection's share of
columns (``"attn.c_attn[qkv:0]"``), a (input module, output module) pair for a
sublayer whose input and pre-residual output live in different modules, an
(input, output, norm) triple for a residual role (the norm is the block's
post-LN, or None on pre-norm models), or a list of alternatives (first present
wins) where transformers releases differ.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping, Union

from .calls import AttentionCall

PROJECTION_ROLES = ("q", "k", "v", "o", "up", "gate", "down", "cross_q", "cross_k", "cross_v", "cross_o")
# attn_residual / ffn_residual: the same sublayer outputs, read together with the residual stream that
# enters them (and, on post-LN models, the norm the block applies to their sum), as AdapterHub's
# bottleneck adapters do.
RESIDUAL_ROLES = ("attn_residual", "ffn_residual")
SUBLAYER_ROLES = ("attn", "cross_attn", "ffn", *RESIDUAL_ROLES)
ALL_ROLES = PROJECTION_ROLES + SUBLAYER_ROLES

RoleSpec = Union[str, tuple, list]

HEAD_NAMES = ("classifier", "score", "qa_outputs", "lm_head", "embed_out")

FUSED = re.compile(r"^(?P<path>[\w.]+)\[(?P<scheme>\w+):(?P<part>\d+)\]$")


@dataclass(frozen=True)
class Layout:
    """Where the blocks are (per stack) and where each role sits inside a block."""

    stacks: Mapping[str, str | tuple[str, ...]]  # stack name -> path suffix(es) of the ModuleList of blocks
    roles: Mapping[str, Mapping[str, RoleSpec]]  # stack name -> role -> spec
    causal: bool = False  # decoder-only: each position sees only earlier ones
    # How the model is called, for prompt and prefix tuning (see calls.py):
    attention: AttentionCall = AttentionCall()  # noqa: RUF009 (frozen, so one shared default is safe)
    # "explicit": it takes position_ids (pass mask-derived ones); "derived": it derives them from the mask
    # itself (OPT); "relative": relative positions only; "fixed": absolute positions it cannot be given.
    positions: str = "fixed"
    cached_stacks: tuple[str, ...] = ()  # stacks run with a key/value cache (prefixes go in through it)
    prompt_module: str = ""  # the module whose input_ids take a soft prompt ("": the model itself)
    # The block that embeds input_ids (word, position and type embeddings, LayerNorm; path suffix), whose output
    # takes a PromptTuning(insert="embedded") ("": not known, so that is refused).
    embeddings: str = ""
    decoder_inputs: tuple[str, ...] = ("input_ids", "inputs_embeds")  # what sets a cached stack's length
    decoder_mask: str = "attention_mask"  # the mask of a cached stack's tokens


def _bert_like(q: str, k: str, v: str, attn_in: str = "attention.self") -> dict:
    return {
        "q": q, "k": k, "v": v, "o": "attention.output.dense",
        "up": "intermediate.dense", "down": "output.dense",
        "attn": (attn_in, "attention.output.dense"),
        "ffn": ("intermediate", "output.dense"),
        "attn_residual": (attn_in, "attention.output.dense", "attention.output.LayerNorm"),
        "ffn_residual": ("intermediate", "output.dense", "output.LayerNorm"),
    }


_LLAMA_LIKE = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "up": "mlp.up_proj", "gate": "mlp.gate_proj", "down": "mlp.down_proj",
    "attn": "self_attn", "ffn": "mlp",
    "attn_residual": ("input_layernorm", "self_attn", None),
    "ffn_residual": ("post_attention_layernorm", "mlp", None),
}


def _t5_stack(cross: bool) -> dict:
    ffn = "layer.2" if cross else "layer.1"
    roles = {
        "q": "layer.0.SelfAttention.q", "k": "layer.0.SelfAttention.k",
        "v": "layer.0.SelfAttention.v", "o": "layer.0.SelfAttention.o",
        "attn": "layer.0.SelfAttention",
        # Gated FFNs (T5 v1.1, flan) name the input projections wi_0 (gate) and wi_1 (up).
        "up": [f"{ffn}.DenseReluDense.wi", f"{ffn}.DenseReluDense.wi_1"],
        "gate": f"{ffn}.DenseReluDense.wi_0", "down": f"{ffn}.DenseReluDense.wo",
        "ffn": f"{ffn}.DenseReluDense",
        "attn_residual": ("layer.0.layer_norm", "layer.0.SelfAttention", None),
        "ffn_residual": (f"{ffn}.layer_norm", f"{ffn}.DenseReluDense", None),
    }
    if cross:
        roles.update({f"cross_{p}": f"layer.1.EncDecAttention.{p}" for p in "qkvo"})
        roles["cross_attn"] = "layer.1.EncDecAttention"
    return roles


def _single(blocks: str | tuple[str, ...], roles: dict, causal: bool = False, **calls) -> Layout:
    if causal:  # decoder-only: the one stack runs with a cache; rotary/learned positions follow the mask
        calls = {"cached_stacks": ("layers",), "positions": "explicit", **calls}
    return Layout({"layers": blocks}, {"layers": roles}, causal, **calls)


_BERT = _single("encoder.layer", _bert_like("attention.self.query", "attention.self.key", "attention.self.value"),
                positions="explicit", embeddings="embeddings")
# RoBERTa offsets its positions by pad_token_id + 1 and numbers them from input_ids itself.
_ROBERTA = dataclasses.replace(_BERT, positions="fixed")
_LLAMA = _single("layers", _LLAMA_LIKE, causal=True)

LAYOUTS: dict[str, Layout] = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "electra": _BERT,
    "deberta-v2": _single("encoder.layer", _bert_like(
        "attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        # The mask comes second, positionally; relative_pos is rebuilt for a longer sequence when None.
        attention=AttentionCall(mask=("attention_mask", 1), hidden=("hidden_states", "query_states"),
                                rebuilt=("relative_pos",)),
        positions="relative"),
    # transformers 5 flattened ViT; 4.x nests it BERT-style (alternatives: first present wins).
    "vit": _single(("layers", "encoder.layer"), {
        "q": ["attention.q_proj", "attention.attention.query"],
        "k": ["attention.k_proj", "attention.attention.key"],
        "v": ["attention.v_proj", "attention.attention.value"],
        "o": ["attention.o_proj", "attention.output.dense"],
        "up": ["mlp.fc1", "intermediate.dense"], "down": ["mlp.fc2", "output.dense"],
        "attn": "attention", "ffn": ["mlp", ("intermediate", "output.dense")],
    }),
    "distilbert": _single("transformer.layer", {
        "q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin",
        "up": "ffn.lin1", "down": "ffn.lin2", "attn": "attention", "ffn": "ffn",
        "attn_residual": ("attention", "attention", "sa_layer_norm"),
        "ffn_residual": ("ffn", "ffn", "output_layer_norm"),
    }, attention=AttentionCall(hidden=("hidden_states", "query", "key", "value"))),  # 4.57: query/key/value=
    "gpt2": _single("h", {
        "q": "attn.c_attn[qkv:0]", "k": "attn.c_attn[qkv:1]", "v": "attn.c_attn[qkv:2]",
        "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj", "attn": "attn", "ffn": "mlp",
        "attn_residual": ("ln_1", "attn", None), "ffn_residual": ("ln_2", "mlp", None),
    }, causal=True),
    "gpt_neox": _single("layers", {
        "q": "attention.query_key_value[qkv_per_head:0]",
        "k": "attention.query_key_value[qkv_per_head:1]",
        "v": "attention.query_key_value[qkv_per_head:2]",
        "o": "attention.dense", "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h",
        "attn": "attention", "ffn": "mlp",
        # parallel residual: both sublayers read the block's input (post_attention_layernorm's input too)
        "attn_residual": ("input_layernorm", "attention", None),
        "ffn_residual": ("post_attention_layernorm", "mlp", None),
    }, causal=True),
    "opt": _single("decoder.layers", {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
        "up": "fc1", "down": "fc2", "attn": "self_attn", "ffn": ("fc1", "fc2"),
        "attn_residual": ("self_attn_layer_norm", "self_attn", None),
        "ffn_residual": ("final_layer_norm", "fc2", None),
    }, causal=True, positions="derived"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": _single("layers", {
        "q": "self_attn.qkv_proj[qkv_gqa:0]", "k": "self_attn.qkv_proj[qkv_gqa:1]",
        "v": "self_attn.qkv_proj[qkv_gqa:2]", "o": "self_attn.o_proj",
        "gate": "mlp.gate_up_proj[halves:0]", "up": "mlp.gate_up_proj[halves:1]",
        "down": "mlp.down_proj", "attn": "self_attn", "ffn": "mlp",
        "attn_residual": ("input_layernorm", "self_attn", None),
        "ffn_residual": ("post_attention_layernorm", "mlp", None),
    }, causal=True),
    "t5": Layout(
        {"encoder": "encoder.block", "decoder": "decoder.block"},
        {"encoder": _t5_stack(cross=False), "decoder": _t5_stack(cross=True)},
        # 4.57 computes the encoder's relative bias from cache_position = arange(T).
        attention=AttentionCall(positions=("cache_position",)),
        positions="relative",
        cached_stacks=("decoder",),
        prompt_module="encoder",
        decoder_inputs=("decoder_input_ids", "decoder_inputs_embeds", "labels"),
        decoder_mask="decoder_attention_mask",
    ),
}
