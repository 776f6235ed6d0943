"""Tiny, randomly initialised Hugging Face models for tests.

Everything is built from a config (no downloads, no hub access) and is small
enough to construct in a fraction of a second on CPU:

* hidden size 32, 2 layers, 4 attention heads (head_dim 8), FFN size 64
* vocab 128, max positions 64
* grouped-query attention (2 key/value heads) where the architecture has it
* all dropout probabilities 0, eager attention, float32

Works with transformers 4.57 and 5.x (only well-known config kwargs are used).
"""

from __future__ import annotations

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

__all__ = [
    "ARCHITECTURES",
    "DECODERS",
    "SEQ2SEQ",
    "ENCODERS",
    "VISION",
    "HEADS",
    "tiny_config",
    "tiny_model",
    "tiny_inputs",
]

ARCHITECTURES: tuple[str, ...] = (
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "electra",
    "deberta-v2",
    "gpt2",
    "gpt_neox",
    "opt",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "phi3",
    "t5",
    "vit",
)

DECODERS: tuple[str, ...] = (
    "gpt2",
    "gpt_neox",
    "opt",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "phi3",
)

SEQ2SEQ: tuple[str, ...] = ("t5",)

VISION: tuple[str, ...] = ("vit",)

# Bidirectional text encoders (no "lm" head here).
ENCODERS: tuple[str, ...] = tuple(
    t for t in ARCHITECTURES if t not in DECODERS + SEQ2SEQ + VISION
)

HEADS: tuple[str, ...] = ("base", "lm", "classification")

HIDDEN = 32
LAYERS = 2
HEADS_N = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS_N  # 8
FFN = 64
VOCAB = 128
MAX_POS = 64
NUM_LABELS = 3
IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_CHANNELS = 3
DECODER_SEQ = 5

# Special token ids used by the text models here; tiny_inputs draws ids from
# [FIRST_REGULAR_TOKEN, vocab) so that random inputs never hit them.
PAD, BOS, EOS = 0, 1, 2
FIRST_REGULAR_TOKEN = 3

_BERT_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS_N,
    intermediate_size=FFN,
    max_position_embeddings=MAX_POS,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    classifier_dropout=0.0,
)

_LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=FFN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS_N,
    num_key_value_heads=KV_HEADS,
    head_dim=HEAD_DIM,
    max_position_embeddings=MAX_POS,
    attention_dropout=0.0,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
    tie_word_embeddings=False,
)


def _config_kwargs(model_type: str) -> dict:
    if model_type == "bert":
        return dict(_BERT_LIKE, type_vocab_size=2, pad_token_id=PAD)
    if model_type in ("roberta", "xlm-roberta"):
        # RoBERTa offsets positions by pad_token_id + 1 (keep the usual pad=1).
        return dict(
            _BERT_LIKE, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2
        )
    if model_type == "electra":
        # embedding_size == hidden_size -> no embeddings_project Linear.
        return dict(_BERT_LIKE, embedding_size=HIDDEN, type_vocab_size=2, pad_token_id=PAD,
                    summary_last_dropout=0.0)
    if model_type == "distilbert":
        return dict(
            vocab_size=VOCAB,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS_N,
            hidden_dim=FFN,
            max_position_embeddings=MAX_POS,
            dropout=0.0,
            attention_dropout=0.0,
            qa_dropout=0.0,
            seq_classif_dropout=0.0,
            pad_token_id=PAD,
        )
    if model_type == "deberta-v2":
        # DeBERTa-v3 style: disentangled relative attention, no absolute positions.
        return dict(
            _BERT_LIKE,
            type_vocab_size=0,
            pad_token_id=PAD,
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=-1,
            position_buckets=16,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pooler_hidden_size=HIDDEN,
            pooler_dropout=0.0,
        )
    if model_type == "gpt2":
        return dict(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS_N,
            n_inner=FFN,
            n_positions=MAX_POS,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
    if model_type == "gpt_neox":
        return dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS_N,
            intermediate_size=FFN,
            max_position_embeddings=MAX_POS,
            attention_dropout=0.0,
            hidden_dropout=0.0,
            classifier_dropout=0.0,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
    if model_type == "opt":
        return dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS_N,
            ffn_dim=FFN,
            max_position_embeddings=MAX_POS,
            dropout=0.0,
            attention_dropout=0.0,
            layerdrop=0.0,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
    if model_type in ("llama", "mistral", "qwen2", "qwen3"):
        return dict(_LLAMA_LIKE)
    if model_type == "gemma":
        return dict(_LLAMA_LIKE, tie_word_embeddings=True)
    if model_type == "phi3":
        kw = dict(_LLAMA_LIKE)
        kw.pop("head_dim")  # phi3 derives head_dim = hidden_size // num_attention_heads
        return dict(
            kw,
            original_max_position_embeddings=MAX_POS,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
        )
    if model_type == "t5":
        return dict(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=HEAD_DIM,
            d_ff=FFN,
            num_layers=LAYERS,
            num_decoder_layers=LAYERS,
            num_heads=HEADS_N,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            classifier_dropout=0.0,
            pad_token_id=PAD,
            eos_token_id=1,
            decoder_start_token_id=PAD,
        )
    if model_type == "vit":
        return dict(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS_N,
            intermediate_size=FFN,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            num_channels=NUM_CHANNELS,
        )
    raise ValueError(f"unknown model_type {model_type!r}; expected one of {ARCHITECTURES}")


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """A tiny config for ``model_type`` (eager attention, no dropout)."""
    kwargs = _config_kwargs(model_type)
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    return config


def _model_class(model_type: str, head: str):
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    if model_type == "t5":
        if head == "base":
            return transformers.T5Model
        if head == "lm":
            return transformers.T5ForConditionalGeneration
        raise ValueError("t5 has no 'classification' head in tiny_models")
    if model_type == "vit":
        if head == "base":
            return transformers.ViTModel
        if head == "classification":
            return transformers.ViTForImageClassification
        raise ValueError("vit has no 'lm' head")
    if head == "base":
        return AutoModel
    if head == "lm":
        if model_type not in DECODERS:
            raise ValueError(f"{model_type!r} is not a decoder; no 'lm' head")
        return AutoModelForCausalLM
    return AutoModelForSequenceClassification


def tiny_model(model_type: str, head: str = "base", seed: int = 0) -> transformers.PreTrainedModel:
    """Build a tiny randomly initialised model (eval mode, float32)."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {ARCHITECTURES}")
    cls = _model_class(model_type, head)
    config = tiny_config(model_type)
    if head == "classification":
        config.num_labels = NUM_LABELS
    torch.manual_seed(seed)
    if cls in (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification):
        model = cls.from_config(config, attn_implementation="eager")
    else:
        model = cls(config)
    model = model.to(torch.float32)
    model.eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = config.pad_token_id
    return model


def tiny_inputs(
    model_type: str,
    batch: int = 2,
    seq: int = 7,
    seed: int = 0,
    padded: bool = False,
) -> dict[str, torch.Tensor]:
    """Deterministic random inputs matching :func:`tiny_model`.

    Text models get ``input_ids`` (ids in ``[3, vocab)``) and ``attention_mask``.
    With ``padded=True`` the last row has 3 masked positions (filled with the pad
    token): on the left for decoders, on the right otherwise. T5 additionally gets
    ``decoder_input_ids`` of length 5; ViT gets only ``pixel_values``.
    """
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {ARCHITECTURES}")
    config = tiny_config(model_type)
    gen = torch.Generator().manual_seed(seed)
    if model_type == "vit":
        pixel_values = torch.randn(
            batch, config.num_channels, config.image_size, config.image_size, generator=gen
        )
        return {"pixel_values": pixel_values}

    vocab = config.vocab_size
    input_ids = torch.randint(FIRST_REGULAR_TOKEN, vocab, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:
        n_pad = min(3, seq - 1)
        pad_id = config.pad_token_id if config.pad_token_id is not None else PAD
        if model_type in DECODERS:
            attention_mask[-1, :n_pad] = 0
            input_ids[-1, :n_pad] = pad_id
        else:
            attention_mask[-1, seq - n_pad:] = 0
            input_ids[-1, seq - n_pad:] = pad_id
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if model_type in SEQ2SEQ:
        out["decoder_input_ids"] = torch.randint(
            FIRST_REGULAR_TOKEN, vocab, (batch, DECODER_SEQ), generator=gen
        )
    return out
