"""Entity F1 by seqeval gives the figures splice's own conlleval scorer gave (that scorer is now deleted)."""

import json
import sys

import pytest

from splice.errors import SpliceError
from splice.train.metrics import entity_metrics

GOLD = [["B-per", "O", "I-per", "I-loc", "O", "O"], ["I-org", "B-loc", "O", "B-per", "B-loc", "O"],
        ["B-loc", "O", "O", "O", "I-per", "I-per"], ["O", "O", "O", "B-loc", "I-per", "O"],
        ["I-org", "B-loc", "O", "O", "I-loc", "I-loc"]]
PREDICTED = [["B-loc", "O", "B-loc", "B-loc", "I-per", "O"], ["O", "O", "B-loc", "I-org", "O", "B-per"],
             ["I-per", "O", "B-loc", "O", "B-loc", "B-per"], ["B-loc", "I-org", "I-loc", "O", "O", "B-loc"],
             ["B-loc", "I-loc", "O", "B-per", "O", "B-loc"]]
# What the hand-written scorer (splice/train/metrics.py before seqeval) returned for GOLD and PREDICTED; on 202
# random BIO cases the two agreed to the last bit.
BEFORE = {"precision": 0.05555555555555555, "recall": 0.07142857142857142, "f1": 0.0625, "support": 14,
          "token_accuracy": 0.16666666666666666, "per_type": {
              "loc": {"precision": 0.09090909090909091, "recall": 0.14285714285714285, "f1": 0.1111111111111111,
                      "support": 7},
              "org": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
              "per": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 5}}}


def test_figures_are_unchanged():
    assert entity_metrics(PREDICTED, GOLD) == BEFORE


def test_perfect_empty_and_entity_free_predictions():
    perfect = entity_metrics(GOLD, GOLD)
    assert perfect["f1"] == 1.0 and perfect["token_accuracy"] == 1.0 and perfect["support"] == 14
    assert entity_metrics([[]], [[]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0,
                                          "token_accuracy": 0.0, "per_type": {}}
    none_found = entity_metrics([["O"] * 6] * 5, GOLD)
    assert none_found["precision"] == none_found["f1"] == 0.0 and none_found["per_type"]["loc"]["support"] == 7
    json.dumps(perfect)  # plain floats: metrics.json takes them


def test_missing_seqeval_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "seqeval.metrics", None)
    with pytest.raises(SpliceError, match=r"needs seqeval: pip install 'splice\[train\]'"):
        entity_metrics(GOLD, GOLD)
