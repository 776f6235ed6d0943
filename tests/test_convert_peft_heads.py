"""A splice head written for peft as the task model's classifier (``modules_to_save``), checked against the
real peft: ``PeftModel.from_pretrained`` on ``AutoModelFor{Sequence,Token}Classification`` gives splice's
logits; heads the task model cannot compute are refused with the options that make one it can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

import splice
from splice.cli import main
from splice.errors import AdapterError
from splice.heads import Classification, Regression, TokenClassification
from splice.train.backbone import task_head

from helpers import perturb
from tiny_models import tiny_model

peft = pytest.importorskip("peft")

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")
ACTIVATION = {"electra": "gelu", "distilbert": "relu"}  # what each family's sequence classifier uses (else tanh)


def inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding, as these families' tokenizers pad
    return {"input_ids": ids, "attention_mask": mask}


def peft_logits(base: torch.nn.Module, folder: Path, auto, labels: int, tmp_path: Path) -> tuple:
    """Logits of the task model ``auto`` built on ``base``'s weights with the peft adapter in ``folder``, and
    without it (to show the adapter and head matter)."""
    base.save_pretrained(tmp_path / "base")
    task_model = auto.from_pretrained(tmp_path / "base", num_labels=labels)
    with torch.no_grad():
        plain = task_model(**inputs()).logits
    loaded = peft.PeftModel.from_pretrained(task_model, folder).eval()
    with torch.no_grad():
        return loaded(**inputs()).logits, plain


def trained(kind: str, method, head) -> splice.AdaptedModel:
    model = splice.attach(tiny_model(kind))
    model.add("task", method, head=head)
    perturb(model.adapters["task"], seed=3)
    return model.eval()


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_peft_gives_splice_logits_for_a_head_written_as_the_task_models_classifier(kind, task, tmp_path):
    head = (Classification(num_labels=3, activation=ACTIVATION.get(kind, "tanh")) if task == "sequence"
            else TokenClassification(num_labels=3))
    model = trained(kind, splice.LoRA(r=2) if kind != "bert" else splice.IA3(), head)
    model.activate("task")
    with torch.no_grad():
        ours = model(**inputs()).logits
    model.save("task", tmp_path / "peft", format="peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == ("SEQ_CLS" if task == "sequence" else "TOKEN_CLS")
    auto = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    theirs, plain = peft_logits(model.base, tmp_path / "peft", auto, 3, tmp_path)
    real = inputs()["attention_mask"].bool() if task == "token" else slice(None)  # padding's tags are noise
    assert (ours[real] - theirs[real]).abs().max() < 1e-5
    assert (plain[real] - theirs[real]).abs().max() > 1e-2


def test_convert_writes_a_splice_train_classifier_for_peft_and_says_how_to_load_it(tmp_path, capsys):
    base = tiny_model("bert")
    base.save_pretrained(tmp_path / "bert")
    # the head `splice train --method lora` gives a classification run (defaults: two layers, [CLS] pooling)
    model = trained("bert", splice.LoRA(r=2), task_head("classification", ["neg", "pos"], None, "auto", 0.1))
    model.save("task", tmp_path / "run" / "adapter")
    model.activate("task")
    with torch.no_grad():
        ours = model(**inputs()).logits
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "peft"), "--model", str(tmp_path / "bert"),
                 "--to", "peft"]) == 0
    err = capsys.readouterr().err
    assert "AutoModelForSequenceClassification.from_pretrained(" in err and "num_labels=2" in err
    theirs, _ = peft_logits(base, tmp_path / "peft", AutoModelForSequenceClassification, 2, tmp_path)
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize(("kind", "method", "head", "words"), [
    ("bert", splice.Bottleneck(), Classification(num_labels=2), ("bottleneck", "--method lora")),
    ("bert", splice.LoRA(r=2), Classification(num_labels=2, layers=1),
     ("layers=1", "--head-layers 2", "BertForSequenceClassification")),
    ("bert", splice.LoRA(r=2), Classification(num_labels=2, pooling="mean"), ("'mean'", "--pooling cls")),
    ("bert", splice.LoRA(r=2), TokenClassification(num_labels=2, layers=2), ("layers=2", "--head-layers 1")),
    ("electra", splice.LoRA(r=2), Regression(), ("activation='tanh'", "activation='gelu'")),
    ("llama", splice.LoRA(r=2), Classification(num_labels=2), ("'llama'", "bert, roberta")),
])
def test_heads_the_task_model_cannot_compute_are_refused_with_the_way_to_get_one(kind, method, head, words,
                                                                                 tmp_path):
    model = trained(kind, method, head)
    with pytest.raises(AdapterError) as refusal:
        model.save("task", tmp_path / "peft", format="peft")
    for word in words:
        assert word in str(refusal.value)
    assert not (tmp_path / "peft").exists()


def test_a_head_on_a_task_model_is_refused(tmp_path):
    model = splice.attach(tiny_model("bert", head="classification"))
    model.add("task", splice.LoRA(r=2), head=Classification(num_labels=2))
    with pytest.raises(AdapterError, match="BertForSequenceClassification, which is not a bare backbone"):
        model.save("task", tmp_path / "peft", format="peft")


def test_without_a_splice_head_the_paths_stay_the_bases(tmp_path):
    model = splice.attach(AutoModel.from_config(tiny_model("bert").config))
    model.add("task", splice.LoRA(r=2))
    model.save("task", tmp_path / "peft", format="peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and config["task_type"] is None
