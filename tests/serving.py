"""Shared fixtures for the serving tests: a character tokenizer for the tiny models, adapters, an in-process server."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import splice
from splice import heads

from helpers import perturb
from tiny_models import tiny_model

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (ids 3..97), [PAD]=0, [BOS]=1, [EOS]=2, [UNK]=98: fits vocab 128."""
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2}
    for char in string.printable[:95]:
        vocab[char] = len(vocab)
    vocab["[UNK]"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]",
                                        eos_token="[EOS]", unk_token="[UNK]")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def encoder(adapters: int = 2, seed: int = 0) -> splice.AdaptedModel:
    """A tiny BERT with ``adapters`` LoRA adapters ``a0, a1, ...``, each with its own (random) 3-label head."""
    model = splice.attach(tiny_model("bert", seed=seed))
    for i in range(adapters):
        model.add(f"a{i}", splice.LoRA(r=4), head=heads.Classification(num_labels=3, labels=["neg", "neu", "pos"]))
        perturb(model.adapters[f"a{i}"], seed=i + 1, std=0.3)
    return model.eval()


def decoder(adapters: int = 2, seed: int = 0) -> splice.AdaptedModel:
    """A tiny Llama causal LM with ``adapters`` perturbed LoRA adapters ``g0, g1, ...``."""
    model = splice.attach(tiny_model("llama", head="lm", seed=seed))
    for i in range(adapters):
        model.add(f"g{i}", splice.LoRA(r=4, targets="all-linear"))
        perturb(model.adapters[f"g{i}"], seed=i + 11, std=0.5)
    return model.eval()


MIXED_METHODS = {"lora0": lambda: splice.LoRA(r=4, targets="all-linear"), "lora1": lambda: splice.LoRA(r=2),
                 "bottleneck": lambda: splice.Bottleneck(r=8), "ia3": lambda: splice.IA3(),
                 "prefix": lambda: splice.PrefixTuning(length=3), "prompt": lambda: splice.PromptTuning(length=2)}


def mixed_decoder(adapters: int = len(MIXED_METHODS), seed: int = 0) -> splice.AdaptedModel:
    """A tiny Llama with the first ``adapters`` of :data:`MIXED_METHODS` (5 methods: LoRA twice, bottleneck, IA3,
    prefix and prompt tuning), each perturbed so it changes the model's answers."""
    model = splice.attach(tiny_model("llama", head="lm", seed=seed))
    for i, (name, config) in enumerate(list(MIXED_METHODS.items())[:adapters]):
        model.add(name, config())
        perturb(model.adapters[name], seed=i + 31, std=1.0)
    return model.eval()


def save_adapters(model: splice.AdaptedModel, folder: Path) -> list[Path]:
    """Each adapter of ``model`` saved to ``folder/<name>``, then deleted from it (the server loads them)."""
    paths = []
    for name in list(model.adapters):
        model.save(name, folder / name)
        model.delete(name)
        paths.append(folder / name)
    return paths


def same(a, b, tol: float = 1e-5) -> bool:
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=tol)


def encoder_app(tmp_path: Path, adapters: int = 2, **engine_options):
    """An app over a tiny BERT whose adapters ``a0, a1, ...`` are served from folders under ``tmp_path``.

    Returns the app and a reference model holding the same adapters (for answers computed directly).
    """
    return _app(encoder, "tiny-bert", tmp_path, adapters, engine_options)


def decoder_app(tmp_path: Path, adapters: int = 2, **engine_options):
    """As :func:`encoder_app`, over a tiny Llama causal LM with adapters ``g0, g1, ...``."""
    return _app(decoder, "tiny-llama", tmp_path, adapters, engine_options)


def mixed_decoder_app(tmp_path: Path, **engine_options):
    """As :func:`decoder_app`, with adapters of every kind of method (:func:`mixed_decoder`)."""
    return _app(mixed_decoder, "tiny-llama", tmp_path, len(MIXED_METHODS), engine_options)


def _app(build, base_name: str, tmp_path: Path, adapters: int, engine_options: dict):
    """``build(n)`` makes a model with n adapters: serve a bare one, with the adapters as folders on disk."""
    from splice.serve import Engine, create_app

    reference = build(adapters)
    save_adapters(build(adapters), tmp_path / "adapters")
    engine = Engine(build(0), char_tokenizer(), **engine_options)
    for path in sorted((tmp_path / "adapters").iterdir()):
        engine.residency.add_source(path.name, lambda path=path: path)
    return create_app(engine, base_name=base_name), reference


def classify_alone(model: splice.AdaptedModel, adapter: str, text: str) -> torch.Tensor:
    """The probabilities ``adapter``'s head gives ``text`` in a batch of one (the reference answer)."""
    ids = torch.tensor([char_tokenizer()(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=[adapter]).logits[0].softmax(-1)


def greedy_alone(model: splice.AdaptedModel, adapter: str, prompt: str, tokens: int) -> str:
    tokenizer = char_tokenizer()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=[adapter],
                             do_sample=False, max_new_tokens=tokens, pad_token_id=0, eos_token_id=2)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
