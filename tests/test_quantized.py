"""Every method on a quantized base (bitsandbytes NF4 and int8 on the CPU, deterministic there).

A quantized layer's weight is packed (``[n, 1]`` uint8 for 4-bit), so shapes must come from the module;
training must leave every quantized tensor and its quant state bit-identical; merging must either refuse or
say what requantizing rounded, never be silently wrong.
"""

from __future__ import annotations

import pytest
import torch

import splice
from splice import Average, Parallel, Stack
from splice.anatomy import linear_shape, quantization_of
from splice.errors import QuantizationError
from splice.methods import BUILT_IN, IA3, LoRA
from splice.quantize import load_options, quantize_loaded

from helpers import PEERS, TINY_OPTIONS, assert_same_state, descend, perturb, rows_alone, state_copy

pytest.importorskip("bitsandbytes")
from transformers import AutoModel, AutoModelForCausalLM  # noqa: E402

LLAMA = PEERS / "peft_llama_qlora" / "base"  # a tiny float Llama (hidden 32, 2 layers)
BERT = PEERS / "peft_bert_lora" / "base"
KINDS = ("nf4", "int8")
RECIPES = {name: recipe for cls in BUILT_IN.values() for name, recipe in cls.training_recipes().items()
           if name not in ("probe", "full")}  # head-only and full fine-tuning train no delta at a site


def quantized(kind: str, path=LLAMA, auto=AutoModelForCausalLM):
    """The tiny model at ``path`` loaded as ``kind``, attached."""
    base = auto.from_pretrained(str(path), **load_options(kind))
    return splice.attach(quantize_loaded(base, kind).eval())


def ids(rows: int = 2, length: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(1, 100, (rows, length), generator=torch.Generator().manual_seed(seed))}


def lm_loss(model, inputs):
    return model(**inputs, labels=inputs["input_ids"]).loss


def train_and_check(model, name, inputs, setup=None, steps=3):
    """Train ``name`` a few steps: the loss moves, the adapter moves, the base (packed weights, quant state,
    everything else) stays bit-identical."""
    before = state_copy(model.base)
    model.train_adapter(name, setup)
    adapter_before = {k: v.clone() for k, v in model.adapters[name].state_dict().items()}
    first = lm_loss(model, inputs).item()
    descend(model, lambda: lm_loss(model, inputs), steps=steps)
    last = lm_loss(model, inputs).item()
    model.eval()
    assert last != first and torch.isfinite(torch.tensor(last))
    assert any(not torch.equal(v, adapter_before[k]) for k, v in model.adapters[name].state_dict().items())
    assert_same_state(model.base, before)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_come_from_the_module_not_the_packed_weight(kind):
    model = quantized(kind)
    q = model.base.model.layers[0].self_attn.q_proj
    assert quantization_of(q) == kind
    assert linear_shape(q) == (32, 32)
    assert [s.out_features for s in model.anatomy.sites("down")] == [32, 32]
    assert quantization_of(model.base.model.layers[0].input_layernorm) is None


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("kind", KINDS)
def test_every_method_trains_on_a_quantized_base_and_leaves_it_bit_identical(kind, recipe):
    model = quantized(kind)
    model.add("task", RECIPES[recipe].config(TINY_OPTIONS.get(recipe, {})))
    train_and_check(model, "task", ids())


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_trains_on_a_quantized_base(kind):
    model = quantized(kind, BERT, AutoModel)
    model.add("task", LoRA(targets=("q", "v")))
    before = state_copy(model.base)
    model.train_adapter("task")
    inputs = {"input_ids": ids()["input_ids"] % 90}
    target = torch.randn(2, 6, 32)
    descend(model, lambda: (model(**inputs).last_hidden_state - target).pow(2).mean(), steps=2)
    assert_same_state(model.base, before)


@pytest.mark.parametrize("block", ["stack", "parallel", "average"])
@pytest.mark.parametrize("kind", KINDS)
def test_composition_blocks_on_a_quantized_base(kind, block):
    model = quantized(kind)
    model.add("frozen", LoRA(targets=("q", "v")))
    model.add("task", RECIPES["pfeiffer"].config({}))
    perturb(model.adapters["frozen"], std=0.2)
    setup = {"stack": Stack("frozen", "task"), "parallel": Parallel("frozen", "task"),
             "average": Average("frozen", "task", weights=[0.5, 0.5])}[block]
    frozen = state_copy(model.adapters["frozen"])
    train_and_check(model, "task", ids(), setup=setup)
    assert_same_state(model.adapters["frozen"], frozen)


@pytest.mark.parametrize("kind", KINDS)
def test_per_row_routing_on_a_quantized_base_matches_each_row_alone(kind):
    model = quantized(kind)
    for name, config in (("lora", LoRA(targets=("q", "v", "down"))), ("ia3", IA3()),
                         ("bottleneck", RECIPES["pfeiffer"].config({}))):
        model.add(name, config)
        perturb(model.adapters[name], std=0.2)
    inputs, entries = ids(4), ["lora", "__base__", "ia3", "bottleneck"]
    with torch.no_grad():
        routed = model(**inputs, adapter_names=entries).logits
    torch.testing.assert_close(routed, rows_alone(model, inputs, entries), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_on_a_quantized_base(kind):
    model = quantized(kind)
    model.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.add("task", LoRA(targets=("q", "v")))
    train_and_check(model, "task", ids())
    assert model.adapters["task"].sites  # trained through the recomputed blocks


@pytest.mark.parametrize("kind", KINDS)
def test_merge_on_a_quantized_base_refuses_unless_asked_to_dequantize(kind):
    model = quantized(kind)
    model.add("task", LoRA(targets=("q", "v", "down")))
    perturb(model.adapters["task"], std=0.2)
    model.activate("task")
    inputs = ids()
    with torch.no_grad():
        unmerged = model(**inputs).logits
    before = state_copy(model.base)
    with pytest.raises(QuantizationError, match="dequantize=True"):
        model.merge("task")
    assert_same_state(model.base, before)  # refused before writing anything
    assert model.merged == ()

    report = model.merge("task", dequantize=True)
    assert report.layers == 6 and 0 < report.mean_error <= report.max_error
    model.disable()
    with torch.no_grad():
        merged = model(**inputs).logits
    # Before: int8 merged by adding the delta to int8 rows in place, 0.31 away from the unmerged model.
    gap = (merged - unmerged).abs().max().item()
    assert gap < (0.1 if kind == "nf4" else 0.02), gap
    assert quantization_of(model.base.model.layers[0].self_attn.q_proj) == kind  # still quantized
    assert model.unmerge("task").layers == 6


def test_merge_on_a_float_base_is_unchanged_exact_and_reports_nothing():
    model = splice.attach(AutoModelForCausalLM.from_pretrained(str(LLAMA)).eval())
    model.add("task", LoRA(targets=("q", "v")))
    perturb(model.adapters["task"], std=0.2)
    model.activate("task")
    inputs, before = ids(), state_copy(model.base)
    with torch.no_grad():
        unmerged = model(**inputs).logits
    assert model.merge("task") is None and model.merged == ("task",)
    model.disable()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, unmerged, atol=1e-5, rtol=1e-5)
    assert model.unmerge("task") is None
    for key, tensor in model.base.state_dict().items():
        torch.testing.assert_close(tensor, before[key], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_records_the_quantization_it_was_trained_under(kind, tmp_path):
    model = quantized(kind)
    model.add("task", LoRA(targets=("q", "v")))
    perturb(model.adapters["task"], std=0.2)
    model.save("task", tmp_path / "task")
    meta = splice.checkpoint.read_meta(tmp_path / "task")
    assert meta["base_quantization"]["layers"] == {kind: 14}
    float_model = splice.attach(AutoModelForCausalLM.from_pretrained(str(LLAMA)).eval())
    assert meta["base"] == float_model.anatomy.fingerprint()  # the fingerprint is the base's, not the storage's
    float_model.load(tmp_path / "task")  # and the adapter loads onto the float base too


def test_torchao_int8_weight_only_backend_trains_and_merges_with_dequantize():
    pytest.importorskip("torchao")
    model = quantized("torchao-int8")
    q = model.base.model.layers[0].self_attn.q_proj
    assert quantization_of(q) == "torchao" and linear_shape(q) == (32, 32)
    assert quantization_of(model.base.lm_head) is None  # the output head stays float
    packed = {n: (m.weight.qdata.clone(), m.weight.scale.clone()) for n, m in model.base.named_modules()
              if quantization_of(m) == "torchao"}
    model.add("task", LoRA(targets=("q", "v")))
    model.train_adapter("task")
    descend(model, lambda: lm_loss(model, ids()), steps=2)
    model.eval()
    for name, module in model.base.named_modules():  # the int8 data and its scales, bit for bit
        if name in packed:
            data, scale = packed[name]
            assert torch.equal(module.weight.qdata, data) and torch.equal(module.weight.scale, scale)
    with torch.no_grad():
        unmerged = model(**ids()).logits
    with pytest.raises(QuantizationError, match="dequantize=True"):
        model.merge("task")
    assert model.merge("task", dequantize=True).layers == 4
    model.disable()
    with torch.no_grad():
        assert (model(**ids()).logits - unmerged).abs().max() < 0.02
    assert quantization_of(q) == "torchao"


@pytest.mark.parametrize("kind", KINDS)
def test_kbit_preparation_widens_a_bfloat16_load_to_float32_and_leaves_the_quantized_layers(kind):
    """Loaded in bfloat16, the embeddings, norms and head widen to float32 when training starts (peft's
    ``prepare_model_for_kbit_training``); the quantized layers' tensors stay bit-identical and the loss trains."""
    base = AutoModelForCausalLM.from_pretrained(str(LLAMA), dtype=torch.bfloat16,
                                                **load_options(kind, compute_dtype="bfloat16"))
    model = splice.attach(base.eval())
    packed = {name for name, m in base.named_modules() if quantization_of(m)}
    layers = {name: state_copy(m) for name, m in base.named_modules() if name in packed}
    halves = [n for n, p in base.named_parameters() if p.dtype == torch.bfloat16]
    assert halves, "the load must leave some float parameters in bfloat16"
    model.add("q", LoRA(r=4))
    perturb(model.adapters["q"], seed=1)
    model.train_adapter("q")
    assert not [n for n, p in base.named_parameters() if p.dtype in (torch.bfloat16, torch.float16)]
    assert {p.dtype for p in model.adapters["q"].parameters()} == {torch.float32}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = ids()
    losses = []
    for _ in range(3):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name, m in base.named_modules():
        if name in packed:
            assert_same_state(m, layers[name])


@pytest.mark.parametrize("kind", KINDS)
def test_the_base_is_counted_at_its_logical_size_on_a_quantized_load(kind):
    """A packed NF4 weight holds two values per byte: the trainable share must not double on a 4-bit base."""
    from splice.anatomy.quantized import parameter_count

    float_base = AutoModelForCausalLM.from_pretrained(str(LLAMA))
    assert parameter_count(quantized(kind).base) == parameter_count(float_base) == float_base.num_parameters()


@pytest.mark.parametrize("kind", KINDS)
def test_summary_gives_a_quantized_base_the_float_bases_size_and_trainable_share(kind):
    """summary() used to count a packed NF4 weight's numel(): half the base, twice the trainable share."""
    float_base = AutoModelForCausalLM.from_pretrained(str(LLAMA))
    reports = []
    for model in (splice.attach(float_base), quantized(kind)):
        model.add("task", LoRA(targets=("q", "v")))
        reports.append(model.summary(print_table=False))
    on_float, on_quantized = reports
    assert on_quantized.base_parameters == on_float.base_parameters == float_base.num_parameters()
    assert on_quantized.rows[0].percent_of_base == on_float.rows[0].percent_of_base


def test_a_tied_embedding_is_counted_once():
    """SmolLM2 ties its head to its embeddings: counting the shared matrix twice would add 28 M parameters."""
    from splice.anatomy.quantized import parameter_count

    from tiny_models import tiny_model

    model = tiny_model("gemma", head="lm")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert parameter_count(model) == model.num_parameters() == splice.attach(model).summary(False).base_parameters


def test_torchao_int4_is_refused_with_the_reason_and_what_to_use():
    from splice.quantize import load_pretrained
    from splice.train import TrainConfig

    with pytest.raises(QuantizationError, match="only on CUDA.*nf4 or fp4.*torchao-int8"):
        load_pretrained(AutoModelForCausalLM, str(LLAMA), "torchao-int4")
    with pytest.raises(QuantizationError, match="torchao-int4 is not offered"):
        TrainConfig(model=str(LLAMA), data="x.jsonl", task="causal-lm", quantize="torchao-int4")
