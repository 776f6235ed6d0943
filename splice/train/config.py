"""What one training run needs, as one flat dataclass that a CLI line, a YAML/JSON file or Python fills in.

Defaults make the main job: ``splice train`` with no options trains a Houlsby
adapter for tweet sentiment on all-MiniLM-L6-v2, subsampled so it finishes in a
few minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import Columns
from ..data.load import describe
from ..data.tables import dataset_name, is_dataset
from ..errors import ConfigError
from ..quantize import check_choice

TASKS = ("classification", "tagging", "causal-lm")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Built-in sets too big to train on in full on a laptop get the quality protocol's subsample by default
# (benchmarks/quality.py); --sizes 0.8,0.1,0.1 uses every row.
DEFAULT_SIZES = {"tweet-sentiment": (4000, 1000, 2000)}


@dataclass
class TrainConfig:
    """One run of ``splice train``. Every field is also a ``--kebab-case`` option of the command."""

    # what to train
    model: str = "minilm"                 # local folder or built-in demo model name (splice.assets.BUILTIN_MODELS)
    quantize: str | None = None           # store the frozen base as nf4 / fp4 / int8 / torchao-int8 (QLoRA)
    compute_dtype: str = "float32"        # dtype 4-bit layers compute in
    # file, folder (save_to_disk ones too), built-in dataset name (splice.data.BUILTIN_DATA), or a 🤗 datasets
    # Dataset / DatasetDict object (a DatasetDict's own splits are kept)
    data: Any = "tweet-sentiment"
    task: str = "classification"
    # a training recipe (see splice.methods.recipes()); Houlsby at 2e-3 is the best measured at <= 2 % trainable
    method: str = "houlsby"
    options: dict[str, Any] = field(default_factory=dict)  # method config options, e.g. {"reduction_factor": 16}
    out: str | None = None                # default out/<data>-<method>
    # the head (classification, tagging)
    head_layers: int | None = None       # default: 2 for classification (dense + output), 1 for tagging
    pooling: str = "auto"
    head_dropout: float = 0.1
    # data
    # flat so that config files and --text-column etc. stay one level deep; read as one Columns by `columns`
    text_column: str = Columns.text
    label_column: str = Columns.label
    tokens_column: str = Columns.tokens
    tags_column: str = Columns.tags
    prompt_column: str = Columns.prompt
    completion_column: str = Columns.completion
    sizes: tuple[float, float, float] | None = None  # train/validation/test: fractions or row counts (see split_sizes)
    limit: int | None = None              # subsample the data to this many rows before splitting
    data_seed: int = 0                    # the split's shuffle; fixed across training seeds
    streaming: bool = False               # read CSV/JSON/Parquet row by row per pass, never held (splice.data.stream)
    max_length: int | None = None         # tokens per example (default 64 for classification/tagging, 256 for LM)
    # optimisation
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 64
    gradient_accumulation: int = 1
    learning_rate: float | None = None    # default: the method's recipe's
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    seed: int = 0
    patience: int | None = None           # early stopping: epochs without improvement
    eval_every: int | None = None         # evaluate (and checkpoint) every N steps instead of every epoch
    save_total_limit: int = 2
    logging_steps: int = 10
    precision: str = "auto"
    gradient_checkpointing: bool = False
    resume: bool = False
    workers: int = 0

    def __post_init__(self) -> None:
        if self.sizes is None:
            self.sizes = DEFAULT_SIZES.get(self.data if isinstance(self.data, str) else "", (0.8, 0.1, 0.1))
        if isinstance(self.sizes, list):
            self.sizes = tuple(self.sizes)
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if not isinstance(self.options, dict):
            raise ConfigError(f"options must be a mapping of method options, got {self.options!r}.")
        if len(self.sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0
                                       for s in self.sizes):
            raise ConfigError(
                f"sizes must be three non-negative numbers (train, validation, test), got {self.sizes!r}.")
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation", "logging_steps", "save_total_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("Give epochs > 0 or max_steps > 0: there is nothing to train otherwise.")
        if self.quantize is not None:
            check_choice(self.quantize, self.compute_dtype)
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience counts evaluations without improvement; it must be >= 1, got {self.patience}.")

    @property
    def columns(self) -> Columns:
        """The data columns to read, as :func:`splice.data.load_data` takes them."""
        return Columns(**{f.name: getattr(self, f"{f.name}_column") for f in dataclasses.fields(Columns)})

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("out") / f"{self.data_name}-{self.method}"

    @property
    def data_name(self) -> str:
        """A short name for the data: a file's or built-in's name, or a Dataset's own name (else "dataset")."""
        if is_dataset(self.data):
            return dataset_name(self.data) or "dataset"
        return Path(str(self.data)).stem

    @property
    def rate(self) -> float:
        """The learning rate: the given one (0 included), else the method's default."""
        from ..methods import recipe

        return recipe(self.method).learning_rate if self.learning_rate is None else self.learning_rate

    @property
    def tokens(self) -> int:
        """Tokens per example: the given ``max_length`` or the task's default."""
        return self.max_length or (256 if self.task == "causal-lm" else 64)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(dataclasses.replace(self, data=""))  # a Dataset is not copied, but described
        data["data"] = describe(self.data) if is_dataset(self.data) else self.data
        data["sizes"] = list(self.sizes)
        return data

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read a YAML (``.yaml``/``.yml``) or JSON config file; ``overrides`` win over the file's values."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"No config file at {path}.")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as error:
                raise ConfigError("YAML config files need pyyaml: pip install 'splice[train]'.") from error
            try:
                values = yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise ConfigError(f"{path} is not valid YAML: {error}") from error
        elif path.suffix == ".json":
            try:
                values = json.loads(text)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path} is not valid JSON: {error}") from error
        else:
            raise ConfigError(f"Config files are .yaml, .yml or .json; got {path.name}.")
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of option: value, got {type(values).__name__}.")
        values = {key.replace("-", "_"): value for key, value in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {unknown}. Known options: {', '.join(sorted(known))}.")
        return cls(**{**values, **overrides})
