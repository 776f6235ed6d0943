"""peft's combination modes for LoRA adapters (``model.average(..., mode="ties")`` and the rest): each
mode against the real peft's ``add_weighted_adapter`` on the same two adapters, peft's own TIES merge
from the peer fixtures, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from safetensors.torch import load_file

import splice
from splice import IA3, AdapterError, LoRA
from splice.combine import CombineOptions, LoRAFactors, combine_site, prune_magnitude

from helpers import PEERS, main_output, perturb, rows_alone
from tiny_models import tiny_inputs, tiny_model

peft = pytest.importorskip("peft")

TOLERANCE = 1e-4
SEED = 7


def test_peft_ties_fixture_is_reproduced():
    folder = PEERS / "peft_llama_lora_ties"
    expected = load_file(str(folder / "expected.safetensors"))
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    base = transformers.AutoModelForCausalLM.from_pretrained(folder / "base", attn_implementation="eager")
    model = splice.attach(base.eval())
    model.load(folder / "a", name="a")
    model.load(folder / "b", name="b")
    merged = model.average("ties", ["a", "b"], [1.0, 0.5], mode="ties", density=0.5)
    assert isinstance(merged.config, LoRA) and merged.config.r == 4
    model.activate("ties")
    out = main_output(model, inputs)
    assert (out - expected["out"]).abs().max() < TOLERANCE
    assert (out - expected["base_out"]).abs().max() > 10 * TOLERANCE


# Each case: mode, options, the two adapters' ranks, weights. Ranks differ where the mode allows it.
CASES = {
    "cat": ("cat", {}, (4, 2), [1.0, 0.5]),
    "cat-negative": ("cat", {}, (4, 4), [1.0, -0.7]),
    "svd": ("svd", {}, (4, 2), [1.0, 0.5]),
    "svd-rank-clamp": ("svd", {"svd_rank": 3, "svd_clamp": 0.9}, (4, 2), [0.6, 0.8]),
    "svd-reduced": ("svd", {"svd_rank": 2, "svd_full_matrices": False}, (4, 4), [1.0, 1.0]),
    "ties": ("ties", {"density": 0.5}, (4, 4), [1.0, 0.5]),
    "ties-frequency": ("ties", {"density": 0.3, "majority_sign_method": "frequency"}, (4, 4), [1.0, -0.5]),
    "ties_svd": ("ties_svd", {"density": 0.6, "svd_rank": 4}, (4, 2), [1.0, 0.5]),
    "dare_linear": ("dare_linear", {"density": 0.5, "seed": SEED}, (4, 4), [1.0, 0.5]),
    "dare_ties": ("dare_ties", {"density": 0.7, "seed": SEED}, (4, 4), [0.8, 0.5]),
    "dare_linear_svd": ("dare_linear_svd", {"density": 0.5, "seed": SEED}, (4, 2), [1.0, 0.5]),
    "dare_ties_svd": ("dare_ties_svd", {"density": 0.5, "seed": SEED, "majority_sign_method": "frequency"},
                      (4, 2), [1.0, 0.5]),
    "magnitude_prune": ("magnitude_prune", {"density": 0.4}, (4, 4), [1.0, 0.5]),
    "magnitude_prune_svd": ("magnitude_prune_svd", {"density": 0.4, "svd_rank": 6}, (4, 2), [1.0, 0.5]),
}

PEFT_NAMES = {"svd_rank": "svd_rank", "svd_clamp": "svd_clamp", "svd_full_matrices": "svd_full_matrices",
              "density": "density", "majority_sign_method": "majority_sign_method"}


ALL_THREE = ("q_proj", "v_proj", "down_proj")


def peft_pair(tmp_path, ranks, targets=(ALL_THREE, ALL_THREE)):
    """Two random LoRA adapters ``one`` and ``two`` made and saved by peft, on a copy of one tiny Llama."""
    base = tiny_model("llama", "lm")
    configs = [peft.LoraConfig(r=r, lora_alpha=2 * r + 1, target_modules=list(modules))
               for r, modules in zip(ranks, targets)]
    peft_model = peft.get_peft_model(copy.deepcopy(base), configs[0], adapter_name="one")
    peft_model.add_adapter("two", configs[1])
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(tmp_path, selected_adapters=["one", "two"])
    return base, peft_model


# Adapters on different projections: peft combines, at each site, the adapters found there.
UNION_CASES = {
    "ties-union": ("ties", {"density": 0.5}, (4, 4), [1.0, 0.5]),
    "svd-union": ("svd", {}, (4, 2), [1.0, 0.5]),
    "dare_ties_svd-union": ("dare_ties_svd", {"density": 0.5, "seed": SEED}, (4, 2), [1.0, 0.5]),
}


@pytest.mark.parametrize("case", list(CASES) + list(UNION_CASES))
def test_mode_matches_peft(tmp_path, monkeypatch, case):
    mode, options, ranks, weights = {**CASES, **UNION_CASES}[case]
    targets = (("q_proj", "v_proj"), ("v_proj", "down_proj")) if case in UNION_CASES else (ALL_THREE, ALL_THREE)
    base, peft_model = peft_pair(tmp_path, ranks, targets)
    inputs = tiny_inputs("llama", padded=True)

    # peft draws DARE's masks from torch's global generator, after the new adapter's own random init:
    # re-seeding right after that init makes peft's draws the ones splice makes with seed=SEED.
    inject = peft.tuners.lora.LoraModel.inject_adapter

    def inject_then_seed(self, *args, **kwargs):
        result = inject(self, *args, **kwargs)
        torch.manual_seed(SEED)
        return result

    monkeypatch.setattr(peft.tuners.lora.LoraModel, "inject_adapter", inject_then_seed)
    peft_model.add_weighted_adapter(["one", "two"], weights, "m", combination_type=mode,
                                    **{PEFT_NAMES[k]: v for k, v in options.items() if k in PEFT_NAMES})
    peft_model.set_adapter("m")
    want = main_output(peft_model.eval(), inputs)

    model = splice.attach(copy.deepcopy(base).eval())
    model.load(tmp_path / "one", name="a")
    model.load(tmp_path / "two", name="b")
    plain = main_output(model, inputs)
    merged = model.average("m", ["a", "b"], weights, mode=mode, **options)
    model.activate("m")
    out = main_output(model, inputs)
    assert (out - want).abs().max() < TOLERANCE
    assert (out - plain).abs().max() > 10 * TOLERANCE, "the combination must change the output"
    peft_rank = peft_model.peft_config["m"].r
    assert merged.config.r == peft_rank and merged.config.alpha == peft_rank and not merged.config.use_rslora


def test_combined_adapter_saves_loads_and_routes(tmp_path):
    model = splice.attach(tiny_model("llama", "lm").eval())
    inputs = tiny_inputs("llama", padded=True)
    for name, r in (("a", 4), ("b", 2)):
        model.add(name, LoRA(r=r, targets=("q", "v")))
        perturb(model.adapters[name], seed=len(name) + r, std=0.2)
    model.average("m", ["a", "b"], [1.0, 0.5], mode="cat")
    model.average("s", ["a", "b"], [1.0, 0.5], mode="svd", svd_rank=2)
    model.activate("m")
    want = main_output(model, inputs)
    model.activate("a")
    alone = main_output(model, inputs)
    model.save("m", tmp_path / "m", format="peft")

    again = splice.attach(tiny_model("llama", "lm").eval())
    again.activate(again.load(tmp_path / "m", name="m"))
    assert (main_output(again, inputs) - want).abs().max() < TOLERANCE
    # one batch, each row its own adapter (the combined ones among them): as if each row ran alone
    entries = ["m", "s"]
    with torch.no_grad():
        routed = model(**inputs, adapter_names=entries)[0]
    assert (routed - rows_alone(model, inputs, entries)).abs().max() < TOLERANCE
    assert (want - alone).abs().max() > 10 * TOLERANCE


def test_cat_is_exact_and_weights_are_not_normalised():
    generator = torch.Generator().manual_seed(0)
    parts = [LoRAFactors(torch.randn(r, 6, generator=generator), torch.randn(5, r, generator=generator), s)
             for r, s in ((3, 0.5), (2, 2.0))]
    a, b = combine_site("cat", parts, [2.0, 3.0], CombineOptions())
    assert a.shape == (5, 6) and b.shape == (5, 5)
    torch.testing.assert_close(b @ a, 2.0 * parts[0].update() + 3.0 * parts[1].update())
    a, b = combine_site("svd", parts, [2.0, 3.0], CombineOptions(svd_rank=5))  # full rank: exact too
    torch.testing.assert_close(b @ a, 2.0 * parts[0].update() + 3.0 * parts[1].update(), atol=1e-5, rtol=1e-5)


def test_dare_is_seeded_and_keeps_the_expectation():
    parts = [LoRAFactors(torch.ones(4, 200), torch.ones(300, 4), 1.0) for _ in range(2)]
    runs = [combine_site("dare_linear_svd", parts, [0.5, 0.5], CombineOptions(density=0.3, seed=s, svd_rank=4),
                         torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.equal(runs[0][0], runs[2][0])
    mean = (runs[0][1] @ runs[0][0]).mean()  # every entry of the update is 4; rescaling keeps that on average
    assert abs(float(mean) - 4.0) < 0.2


def test_magnitude_prune_keeps_the_largest_entries():
    tensor = torch.tensor([[0.1, -3.0, 0.2], [2.0, -0.05, 1.0]])
    assert torch.equal(prune_magnitude(tensor, 0.5), torch.tensor([[0.0, -3.0, 0.0], [2.0, 0.0, 1.0]]))


@pytest.fixture
def three():
    model = splice.attach(tiny_model("llama", "lm"))
    model.add("a", LoRA(r=4, targets=("q", "v")))
    model.add("b", LoRA(r=2, targets=("q", "v")))
    model.add("c", LoRA(r=4, targets=("q", "k")))
    model.add("d", LoRA(r=4, targets=("k",), layers=(1,)))  # with a (q, v everywhere): no LoRA says just those
    model.add("i", IA3())
    return model


REFUSALS = [
    (("a", "i"), [1, 1], "cat", {}, ("'i'", "not LoRA", "to_lora")),
    (("a", "c"), [1, 1], "cat", {}, ("'cat' needs adapters on the same sites",)),
    (("a", "d"), [1, 1], "ties", {"density": 0.5}, ("no one LoRA covers", "layers.0.k")),
    (("a", "b"), [1, 1], "ties", {"density": 0.5}, ("one rank", "ranks [2, 4]")),
    (("a", "b"), [1, 1], "ties", {}, ("density",)),
    (("a", "b"), [1, 1], "ties", {"density": 0.0}, ("density", "(0, 1]")),
    (("a", "b"), [1, 1], "dare_ties", {"density": 1.5}, ("density",)),
    (("a", "b"), [1, 1], "cat", {"density": 0.5}, ("'cat' takes no density",)),
    (("a", "b"), [1, 1], "svd", {"seed": 1}, ("takes no seed",)),
    (("a", "b"), [1, 1], "ties_svd", {"density": 0.5, "majority_sign_method": "most"}, ("majority_sign_method",)),
    (("a", "b"), [1, 1], "svd", {"svd_rank": 0}, ("svd_rank",)),
    (("a", "b"), [1, 1], "svd", {"svd_clamp": 2.0}, ("svd_clamp",)),
    (("a", "b"), [1, 1], "svd", {"svd_driver": "gesvdj"}, ("CUDA",)),
    (("a", "b"), [1, 1], "svd", {"rank": 2}, ("Unknown option", "svd_rank")),
    (("a", "b"), None, "cat", {}, ("one weight each",)),
    (("a",), [1], "cat", {}, ("two or more",)),
    (("a", "b"), [1, float("nan")], "cat", {}, ("finite",)),
    (("a", "b"), [1, 1], "linear", {}, ("'exact', 'parameters'", "ties")),
    (("a", "b"), [0.5, 0.5], "exact", {"density": 0.5}, ("takes no options",)),
]


@pytest.mark.parametrize("adapters, weights, mode, options, words", REFUSALS)
def test_refusals_name_the_problem(three, adapters, weights, mode, options, words):
    with pytest.raises(AdapterError) as error:
        three.average("m", adapters, weights, mode=mode, **options)
    for word in words:
        assert word in str(error.value), str(error.value)
    assert "m" not in three.adapters, "a refused combination must add nothing"


def test_adapters_with_heads_are_refused():
    model = splice.attach(tiny_model("bert", "classification"))
    model.add("a", LoRA(r=2), head="classifier")
    model.add("b", LoRA(r=2), head="classifier")
    with pytest.raises(AdapterError, match="carry a head"):
        model.average("m", ["a", "b"], [1.0, 1.0], mode="cat")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_mode_runs_on_the_adapters_device(device):
    generator = torch.Generator().manual_seed(0)
    parts = [LoRAFactors(torch.randn(3, 40, generator=generator).to(device),
                         torch.randn(30, 3, generator=generator).to(device), 0.5) for _ in range(2)]
    for mode in ("cat", "ties", "dare_ties", "svd", "dare_linear_svd"):
        options = CombineOptions(density=None if mode in ("cat", "svd") else 0.5,
                                 seed=1 if "dare" in mode else None, svd_rank=3 if "svd" in mode else None)
        runs = [combine_site(mode, parts, [1.0, -0.5], options, torch.Generator(device).manual_seed(1))
                for _ in range(2)]
        assert runs[0][0].device.type == device and torch.equal(runs[0][0], runs[1][0])  # seeded: the same draws
    if device == "cuda":  # the cuSOLVER drivers peft offers give the same factorisation's product
        want = combine_site("svd", parts, [1.0, 0.5], CombineOptions(svd_rank=3))
        for driver in ("gesvd", "gesvdj", "gesvda"):
            a, b = combine_site("svd", parts, [1.0, 0.5], CombineOptions(svd_rank=3, svd_driver=driver))
            torch.testing.assert_close(b @ a, want[1] @ want[0], atol=1e-4, rtol=1e-4)
