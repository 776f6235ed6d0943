"""The names of the files in an adapter folder, for every format splice reads or writes.

Kept apart from the readers (which import torch) so that ``splice info`` and ``splice --help`` can
name them without waiting for torch. The first of each weights pair is the safetensors file.
"""

# splice's own folder
CONFIG_FILE = "adapter.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"

# peft and AdapterHub share the config file's name; AdapterHub adds a head and AdapterFusion folders
FOREIGN_CONFIG = "adapter_config.json"
HEAD_CONFIG = "head_config.json"
FUSION_CONFIG = "adapter_fusion_config.json"

PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTERHUB_WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")
ADAPTERHUB_HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.bin")
FUSION_WEIGHTS = ("model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin")
