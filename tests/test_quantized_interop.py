"""peft adapters trained on quantized bases load into splice on the same quantized base and reproduce peft.

The 4-bit case is the stored peer fixture (tests/fixtures/peers/README.md); the int8 case is made here with the
real peft, which is installed beside splice for these tests.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import splice
from splice.quantize import load_options

from helpers import PEERS, main_output, perturb

pytest.importorskip("bitsandbytes")
from transformers import AutoModelForCausalLM  # noqa: E402

QLORA = PEERS / "peft_llama_qlora"
TOLERANCE = 1e-4  # the peer fixtures' tolerance


def load(kind: str, path=QLORA / "base"):
    return AutoModelForCausalLM.from_pretrained(str(path), **load_options(kind)).eval()


def test_peft_qlora_fixture_reproduces_peft_on_the_same_4bit_base():
    expected = load_file(str(QLORA / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    model = splice.attach(load("nf4"))
    assert (main_output(model, inputs) - expected["base_out"]).abs().max() < TOLERANCE
    model.activate(model.load(QLORA / "adapter"))
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE  # every row, the padded one included
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE, "the adapter must change the output"


def test_peft_lora_on_an_int8_base_made_now_reproduces_in_splice(tmp_path):
    peft = pytest.importorskip("peft")
    inputs = {"input_ids": torch.tensor([[5, 9, 14, 3, 77, 41], [8, 2, 60, 61, 1, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])}
    peer = peft.get_peft_model(load("int8"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                                "down_proj"]))
    perturb(torch.nn.ModuleList(m for n, m in peer.named_modules() if n.endswith(("lora_A", "lora_B"))), std=0.2)
    peer.eval()
    expected = main_output(peer, inputs)
    peer.save_pretrained(tmp_path / "adapter")

    model = splice.attach(load("int8"))
    base_out = main_output(model, inputs)
    model.activate(model.load(tmp_path / "adapter"))
    out = main_output(model, inputs)
    assert (out - expected).abs().max() < TOLERANCE
    assert (out - base_out).abs().max() > 10 * TOLERANCE, "the adapter must change the output"
