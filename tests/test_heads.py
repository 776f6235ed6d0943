"""Prediction heads owned by adapters (splice.heads) on bare backbones: tiny BERT (AutoModel) and tiny Llama."""

import json

import pytest
import torch
from transformers import Trainer, TrainingArguments

import splice
from splice import heads
from splice.errors import ConfigError, SpliceError

from helpers import perturb
from tiny_models import tiny_inputs, tiny_model

B, T, C = 4, 7, 3  # batch, tokens, choices
VOCAB = 128


# -- batches and references ------------------------------------------------------------------------------

def _make(kind: str, **options) -> heads.Head:
    """A fresh head of ``kind`` (dropout 0, so train-mode losses are deterministic)."""
    factories = {
        "classification": lambda: heads.Classification(num_labels=3, labels=["neg", "neu", "pos"], dropout=0.0),
        "multi_label": lambda: heads.Classification(num_labels=4, multi_label=True, dropout=0.0),
        "regression": lambda: heads.Regression(dropout=0.0),
        "regression2": lambda: heads.Regression(num_outputs=2, pooling="mean", layers=1, dropout=0.0),
        "token_classification": lambda: heads.TokenClassification(num_labels=5, dropout=0.0),
        "multiple_choice": lambda: heads.MultipleChoice(dropout=0.0),
        "question_answering": lambda: heads.QuestionAnswering(),
    }
    return factories[kind]()


KINDS = ["classification", "multi_label", "regression", "regression2", "token_classification",
         "multiple_choice", "question_answering"]


def _batch(kind: str, arch: str, seed: int = 0) -> dict:
    """Inputs plus random targets for ``kind``; the last row is padded (left on Llama, right on BERT)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "multiple_choice":
        ids = torch.randint(3, VOCAB, (B, C, T), generator=g)
        mask = torch.ones(B, C, T, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, C, (B,), generator=g)}
    batch = tiny_inputs(arch, batch=B, seq=T, seed=seed, padded=True)
    if kind == "classification":
        batch["labels"] = torch.randint(0, 3, (B,), generator=g)
    elif kind == "multi_label":
        batch["labels"] = torch.randint(0, 2, (B, 4), generator=g).float()
    elif kind == "regression":
        batch["labels"] = torch.randn(B, generator=g)
    elif kind == "regression2":
        batch["labels"] = torch.randn(B, 2, generator=g)
    elif kind == "token_classification":
        labels = torch.randint(0, 5, (B, T), generator=g)
        batch["labels"] = labels.masked_fill(batch["attention_mask"] == 0, -100)
    elif kind == "question_answering":
        batch["start_positions"] = torch.randint(0, T, (B,), generator=g)
        batch["end_positions"] = torch.randint(0, T, (B,), generator=g)
    return batch


def _model(arch: str) -> splice.AdaptedModel:
    return splice.attach(tiny_model(arch))  # bare AutoModel: BertModel / LlamaModel


def _add(model, name, head, method=None):
    model.add(name, method or splice.LoRA(r=4), head=head)  # sets head.causal from the backbone
    return head


def _inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("labels", "start_positions", "end_positions")}


def _ce(logits, target, ignore=-100):
    """Cross-entropy by hand: mean over kept rows of -log softmax at the target."""
    logp = logits - logits.logsumexp(-1, keepdim=True)
    keep = target != ignore
    return -logp[keep].gather(-1, target[keep].unsqueeze(-1)).mean()


def _reference_loss(kind, logits, batch):
    if kind in ("classification", "multiple_choice"):
        return _ce(logits, batch["labels"])
    if kind == "multi_label":
        x, y = logits, batch["labels"]
        return (x.clamp(min=0) - x * y + torch.log1p(torch.exp(-x.abs()))).mean()
    if kind.startswith("regression"):
        return ((logits - batch["labels"].reshape(logits.shape)) ** 2).mean()
    if kind == "token_classification":
        return _ce(logits.reshape(-1, 5), batch["labels"].reshape(-1))
    if kind == "question_answering":
        tokens = logits.shape[1]
        start = _ce(logits[..., 0], batch["start_positions"].clamp(0, tokens), ignore=tokens)
        end = _ce(logits[..., 1], batch["end_positions"].clamp(0, tokens), ignore=tokens)
        return (start + end) / 2
    raise AssertionError(kind)


def _pooled_by_hand(hidden, mask, how):
    """Pooling written out row by row."""
    rows = []
    for b in range(hidden.shape[0]):
        real = [t for t in range(hidden.shape[1]) if mask[b, t]]
        if how == "cls":
            rows.append(hidden[b, real[0]])
        elif how == "last":
            rows.append(hidden[b, real[-1]])
        else:
            rows.append(hidden[b, real].mean(0))
    return torch.stack(rows)


def _reference_logits(model, head, kind, batch):
    """The head's logits recomputed from the hooked backbone's hidden states, step by step."""
    inputs = _inputs(batch)
    if kind == "multiple_choice":
        inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
    with torch.no_grad():
        hidden = model.base(**inputs).last_hidden_state
        if kind in ("token_classification", "question_answering"):
            return head.mlp(hidden)
        pooled = _pooled_by_hand(hidden, inputs["attention_mask"], head.resolved_pooling)
        logits = head.mlp(pooled)
    return logits.view(-1, C) if kind == "multiple_choice" else logits


ARCHS = ["bert", "llama"]


# -- training, loss, logits --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_training_reduces_the_loss(arch, kind):
    model = _model(arch)
    head = _add(model, "task", _make(kind))
    model.train_adapter("task")
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    batch = _batch(kind, arch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in head.parameters()} <= {id(p) for p in trainable}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] * 0.9, losses
    for key, tensor in model.base.state_dict().items():
        assert torch.equal(tensor, base_before[key]), key


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_loss_match_a_hand_computed_reference(arch, kind):
    model = _model(arch)
    head = _add(model, "task", _make(kind))
    perturb(model.adapters["task"], seed=1, std=0.2)
    model.activate("task")
    batch = _batch(kind, arch)
    with torch.no_grad():
        out = model(**batch)
    expected_shape = {
        "classification": (B, 3), "multi_label": (B, 4), "regression": (B, 1), "regression2": (B, 2),
        "token_classification": (B, T, 5), "multiple_choice": (B, C), "question_answering": (B, T, 2),
    }[kind]
    assert out.logits.shape == expected_shape
    torch.testing.assert_close(out.logits, _reference_logits(model, head, kind, batch), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, _reference_loss(kind, out.logits, batch), rtol=1e-5, atol=1e-6)
    without_targets = model(**_inputs(batch))
    assert without_targets.loss is None
    assert torch.equal(without_targets.logits, out.logits)


def test_auto_pooling_follows_the_causal_hint():
    head = heads.Classification(num_labels=2, hidden_size=8)
    assert head.resolved_pooling == "cls"
    head.causal = True
    assert head.resolved_pooling == "last"
    assert heads.Classification(num_labels=2, pooling="mean", causal=True).resolved_pooling == "mean"


def test_add_sets_causal_from_the_backbone():
    llama, bert = _model("llama"), _model("bert")
    on_llama = heads.Classification(num_labels=2)
    on_bert = heads.Classification(num_labels=2)
    llama.add("t", splice.LoRA(r=4), head=on_llama)
    bert.add("t", splice.LoRA(r=4), head=on_bert)
    assert on_llama.causal is True and on_llama.resolved_pooling == "last"
    assert on_bert.causal is False and on_bert.resolved_pooling == "cls"


# -- pooling -------------------------------------------------------------------------------------------------

def test_pool_picks_real_tokens_under_left_and_right_padding():
    hidden = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert heads.pool(hidden, right, "last").flatten().tolist() == [2.0, 9.0]
    assert heads.pool(hidden, left, "last").flatten().tolist() == [4.0, 9.0]
    assert heads.pool(hidden, right, "cls").flatten().tolist() == [0.0, 5.0]
    assert heads.pool(hidden, left, "cls").flatten().tolist() == [2.0, 5.0]
    assert heads.pool(hidden, right, "mean").flatten().tolist() == [1.0, 7.0]
    assert heads.pool(hidden, left, "mean").flatten().tolist() == [3.0, 7.0]
    assert heads.pool(hidden, None, "last").flatten().tolist() == [4.0, 9.0]
    with pytest.raises(SpliceError, match="attention_mask"):
        heads.pool(hidden, torch.ones(2, 4), "last")


def test_last_token_pooling_is_the_same_for_left_and_right_padding_on_llama():
    model = _model("llama")
    head = _add(model, "t", heads.Classification(num_labels=3))  # default dropout: eval() must switch it off
    perturb(model.adapters["t"], seed=2, std=0.2)
    model.activate("t")
    model.eval()
    g = torch.Generator().manual_seed(5)
    short, full = torch.randint(3, VOCAB, (4,), generator=g), torch.randint(3, VOCAB, (T,), generator=g)
    pad = torch.zeros(T - 4, dtype=torch.long)
    real_right = torch.cat([torch.ones(4, dtype=torch.long), pad])
    every = torch.ones(T, dtype=torch.long)
    batches = {
        "right": (torch.stack([torch.cat([short, pad]), full]), torch.stack([real_right, every])),
        "left": (torch.stack([torch.cat([pad, short]), full]), torch.stack([real_right.flip(0), every])),
    }
    logits = {}
    for side, (ids, mask) in batches.items():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # the real tokens keep positions 0..n-1 either way
        with torch.no_grad():
            logits[side] = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert head.resolved_pooling == "last"
    torch.testing.assert_close(logits["left"], logits["right"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and it is the short sequence's own last token, not a pad
        alone = model(input_ids=short[None], attention_mask=torch.ones(1, 4, dtype=torch.long)).logits
    torch.testing.assert_close(logits["right"][:1], alone, rtol=1e-5, atol=1e-6)


# -- specific kinds ----------------------------------------------------------------------------------------

def test_multiple_choice_flattens_choices_and_scores_each():
    model = _model("bert")
    _add(model, "mc", heads.MultipleChoice(num_choices=C, dropout=0.0))
    perturb(model.adapters["mc"], seed=3, std=0.2)
    model.activate("mc")
    batch = _batch("multiple_choice", "bert")
    batch["token_type_ids"] = torch.zeros(B, C, T, dtype=torch.long)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (B, C)
    with torch.no_grad():
        flat = model(**{k: v.flatten(0, 1) for k, v in _inputs(batch).items()}).logits  # num_choices says C
        order = torch.tensor([2, 0, 1])
        permuted = model(**{k: v[:, order] for k, v in _inputs(batch).items()}).logits
    torch.testing.assert_close(flat, out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(permuted, out.logits[:, order], rtol=1e-5, atol=1e-6)  # each choice scored alone
    torch.testing.assert_close(out.loss, _ce(out.logits, batch["labels"]))
    with pytest.raises(SpliceError, match="3 choices|num_choices"):
        model(input_ids=torch.randint(3, VOCAB, (2, 4, T)))


def test_multiple_choice_without_num_choices_needs_nested_inputs():
    model = _model("bert")
    _add(model, "mc", heads.MultipleChoice())
    model.activate("mc")
    with pytest.raises(SpliceError, match=r"\[batch, choices, tokens\]"):
        model(input_ids=torch.randint(3, VOCAB, (6, T)))


def test_question_answering_ignores_positions_outside_the_sequence():
    model = _model("bert")
    _add(model, "qa", heads.QuestionAnswering())
    perturb(model.adapters["qa"], seed=4, std=0.2)
    model.activate("qa")
    batch = _batch("question_answering", "bert")
    batch["start_positions"][0] = 100  # an answer truncated away: ignored, as in HF's QA models
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (B, T, 2)
    start = _ce(out.logits[1:, :, 0], batch["start_positions"][1:])
    end = _ce(out.logits[:, :, 1], batch["end_positions"])
    torch.testing.assert_close(out.loss, (start + end) / 2)
    assert heads.QuestionAnswering.label_names == ("start_positions", "end_positions")


def test_multi_label_takes_float_targets():
    model = _model("bert")
    head = _add(model, "ml", heads.Classification(num_labels=4, multi_label=True))
    model.activate("ml")
    batch = _batch("multi_label", "bert")
    batch["labels"][0] = torch.tensor([0.25, 0.5, 0.75, 1.0])  # soft targets are fine for BCE
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.loss, _reference_loss("multi_label", out.logits, batch))
    with pytest.raises(SpliceError, match="one 0/1 per class"):
        head.loss(out.logits, {"labels": torch.ones(B)})


def test_classification_keeps_label_names():
    head = heads.Classification(num_labels=2, labels=["neg", "pos"])
    assert head.labels == ("neg", "pos")
    assert head.to_dict()["labels"] == ["neg", "pos"]
    assert heads.TokenClassification(num_labels=2, labels=("O", "B-PER")).labels == ("O", "B-PER")


def test_base_lm_head_needs_no_splice_head():
    """Language modelling: a decoder attached with its LM head keeps that head, its loss and its logits."""
    model = splice.attach(tiny_model("llama", head="lm"))
    model.add("lm", splice.LoRA(r=4))
    model.train_adapter("lm")
    inputs = tiny_inputs("llama", batch=2, seq=T)
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (2, T, VOCAB)
    out.loss.backward()
    assert not hasattr(heads, "LanguageModeling")


# -- switching, saving, loading ---------------------------------------------------------------------------

def test_switching_the_active_adapter_switches_the_head():
    model = _model("bert")
    _add(model, "sentiment", heads.Classification(num_labels=3))
    _add(model, "ner", heads.TokenClassification(num_labels=5))
    inputs = tiny_inputs("bert", batch=B, seq=T)
    with torch.no_grad():
        model.activate("sentiment")
        assert model(**inputs).logits.shape == (B, 3)
        model.activate("ner")
        assert model(**inputs).logits.shape == (B, T, 5)
        model.activate("sentiment")
        assert model(**inputs).logits.shape == (B, 3)
        model.disable()
        assert model(**inputs).last_hidden_state.shape == (B, T, 32)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_row_routing_gives_each_row_its_own_head(arch):
    model = _model(arch)
    _add(model, "sentiment", heads.Classification(num_labels=3))
    _add(model, "topic", heads.Classification(num_labels=3, pooling="mean"), splice.Bottleneck(r=4))
    _add(model, "ner", heads.TokenClassification(num_labels=5))
    perturb(model.adapters, seed=6, std=0.2)
    inputs = tiny_inputs(arch, batch=B, seq=T, padded=True)  # the last row is padded
    names = ["ner", "sentiment", "__base__", "topic"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
    assert [None if row is None else tuple(row.shape) for row in mixed] == [(T, 5), (3,), None, (3,)]
    for row, name in enumerate(names):
        if name == "__base__":
            continue
        model.activate(name)
        with torch.no_grad():
            alone = model(**{k: v[row:row + 1] for k, v in inputs.items()}).logits[0]
        torch.testing.assert_close(mixed[row], alone, rtol=1e-5, atol=1e-5)

    labels = torch.tensor([0, 2, 1, 1])  # heads of one shape: one logits tensor and one loss over all rows
    with torch.no_grad():
        out = model(**inputs, labels=labels, adapter_names=["sentiment", "topic", "topic", "sentiment"])
    assert out.logits.shape == (B, 3)
    torch.testing.assert_close(out.loss, _ce(out.logits, labels))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip(tmp_path, arch, kind):
    model = _model(arch)
    head = _add(model, "task", _make(kind))
    perturb(model.adapters["task"], seed=5, std=0.2)
    model.activate("task")
    batch = _inputs(_batch(kind, arch))
    with torch.no_grad():
        before = model(**batch).logits
    model.save("task", tmp_path / "task")

    meta = json.loads((tmp_path / "task" / "adapter.json").read_text())
    assert meta["head"] == head.to_dict()
    assert meta["head"]["kind"] == head.kind and meta["head"]["hidden_size"] == 32

    fresh = _model(arch)
    name = fresh.load(tmp_path / "task")
    fresh.activate(name)
    loaded = fresh.adapters[name].task_head
    assert type(loaded) is type(head) and loaded is not head
    assert loaded.to_dict() == head.to_dict()
    with torch.no_grad():
        after = fresh(**batch).logits
    assert torch.equal(after, before)


@pytest.mark.parametrize("kind", KINDS)
def test_head_config_round_trips_through_json(kind):
    head = _make(kind)
    head.build(16)
    data = json.loads(json.dumps(head.to_dict()))
    again = heads.head_from_dict(data)
    assert type(again) is type(head)
    assert again.to_dict() == head.to_dict()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}


def test_causal_hint_is_saved(tmp_path):
    model = _model("llama")
    head = _add(model, "t", heads.Regression())
    model.save("t", tmp_path / "t")
    assert json.loads((tmp_path / "t" / "adapter.json").read_text())["head"]["causal"] is True
    fresh = _model("llama")
    fresh.load(tmp_path / "t")
    assert fresh.adapters["t"].task_head.resolved_pooling == "last"
    assert head.resolved_pooling == "last"


def test_head_from_dict_rejects_unknown_kinds():
    with pytest.raises(ConfigError, match="Unknown head kind 'tagger'.*classification"):
        heads.head_from_dict({"kind": "tagger"})
    assert set(heads.HEADS) == {"classification", "regression", "token_classification", "multiple_choice",
                                "question_answering"}


# -- the HF Trainer ----------------------------------------------------------------------------------------

def test_hf_trainer_trains_an_adapter_with_a_head_on_a_bare_backbone(tmp_path):
    model = _model("bert")
    head = _add(model, "sst", heads.Classification(num_labels=2, labels=["neg", "pos"]))
    model.train_adapter("sst")
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, VOCAB, (T,), generator=g), "attention_mask": torch.ones(T, dtype=torch.long),
             "labels": i % 2} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                             logging_strategy="no")
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert result.global_step == 3
    for key, tensor in model.base.state_dict().items():
        assert torch.equal(tensor, base_before[key]), key
    assert any(not torch.equal(v, head_before[k]) for k, v in head.state_dict().items())


# -- bad arguments -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: heads.Classification(num_labels=0), "num_labels must be an integer >= 1"),
    (lambda: heads.Classification(num_labels=1), "at least 2 classes"),
    (lambda: heads.Classification(num_labels=2.0), "num_labels must be an integer"),
    (lambda: heads.Classification(num_labels=True), "num_labels must be an integer"),
    (lambda: heads.Classification(num_labels=2, labels=["a"]), "names 1 classes but num_labels is 2"),
    (lambda: heads.Classification(num_labels=2, labels="ab"), "list of class names"),
    (lambda: heads.Classification(num_labels=2, labels=["a", "a"]), "repeated"),
    (lambda: heads.Classification(num_labels=2, labels=[0, 1]), "list of class names"),
    (lambda: heads.Classification(num_labels=2, multi_label="yes"), "multi_label must be True or False"),
    (lambda: heads.Classification(num_labels=2, pooling="max"), "pooling must be one of 'auto', 'cls'"),
    (lambda: heads.Classification(num_labels=2, layers=0), "layers must be an integer >= 1"),
    (lambda: heads.Classification(num_labels=2, dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    (lambda: heads.Classification(num_labels=2, dropout=-0.1), "dropout"),
    (lambda: heads.Classification(num_labels=2, activation="softmax"), "activation must be one of"),
    (lambda: heads.Classification(num_labels=2, causal="yes"), "causal must be True, False or None"),
    (lambda: heads.Classification(num_labels=2, hidden_size=0), "hidden_size must be an integer >= 1"),
    (lambda: heads.Regression(num_outputs=0), "num_outputs must be an integer >= 1"),
    (lambda: heads.TokenClassification(num_labels=1), "num_labels must be an integer >= 2"),
    (lambda: heads.TokenClassification(num_labels=3, labels=["O"]), "names 1 classes"),
    (lambda: heads.MultipleChoice(num_choices=1), "num_choices must be an integer >= 2"),
    (lambda: heads.QuestionAnswering(layers=-1), "layers must be an integer >= 1"),
])
def test_bad_constructor_arguments_raise_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_head_used_before_it_is_built_says_how_to_fix_it():
    head = heads.Classification(num_labels=2)
    with pytest.raises(SpliceError, match="no parameters yet.*model.add"):
        head(torch.zeros(1, 3, 8), None, {})


def test_a_head_built_for_one_width_refuses_another():
    head = heads.Classification(num_labels=2, hidden_size=16)
    model = _model("bert")
    with pytest.raises(ConfigError, match="built for hidden size 16, but the backbone's is 32"):
        model.add("t", splice.LoRA(r=4), head=head)


# -- contract gaps (apply_heads), written as they should behave --------------------------------------------

def test_a_freshly_attached_model_runs_heads_without_dropout():
    model = _model("bert")  # tiny_model returns the base in eval mode
    _add(model, "t", heads.Classification(num_labels=3, dropout=0.5))
    model.activate("t")
    inputs = tiny_inputs("bert", batch=B, seq=T)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_head_loss_honours_num_items_in_batch():
    model = _model("bert")
    _add(model, "t", _make("classification"))
    model.activate("t")
    batch = _batch("classification", "bert")
    with torch.no_grad():
        mean = model(**batch).loss
        scaled = model(**batch, num_items_in_batch=torch.tensor(2 * B)).loss  # half of two accumulated batches
    torch.testing.assert_close(scaled, mean * B / (2 * B))
