"""Federated training of splice adapters on Flower (``pip install 'splice[federated]'``).

Only the adapter travels: each round the server sends the global adapter's tensors
(deltas and head, about a megabyte for a bottleneck on MiniLM), every client trains
it on its own data with the same :class:`~splice.train.TrainConfig` as ``splice
train`` and sends its tensors back with its number of examples, and a Flower
strategy (FedAvg by default, weighted by examples; FedProx, FedAdam, ... from
``flwr.serverapp.strategy``) aggregates them. After each round the server writes the
global adapter as an ordinary splice folder, with the round's metrics on its model card.

- :data:`client_app` / :data:`server_app`: Flower apps configured by the run config
  (``[tool.flwr.app.config]``, see :func:`train_config_from`) and each node's
  ``partition-id`` / ``num-partitions``;
- :class:`LocalTrainer`, :class:`RoundWriter`: the pieces, for your own apps.

``splice fedavg`` stays the offline tool: the same weighted average of adapter folders.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    from ..errors import SpliceError

    raise SpliceError("splice.federated needs Flower: pip install 'splice[federated]'.") from error

from .apps import client_app, server_app, train_config_from
from .client import LocalTrainer
from .server import RoundWriter
from .tensors import adapter_arrays, array_bytes, load_arrays

__all__ = ["LocalTrainer", "RoundWriter", "adapter_arrays", "array_bytes", "client_app", "load_arrays",
           "server_app", "train_config_from"]
