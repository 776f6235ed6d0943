"""What every soft-token mechanism shares: positions that skip unused slots, and calls that continue a cache."""

from __future__ import annotations

import torch

from ...anatomy import Anatomy
from ...anatomy.calls import given_cache, positions_from_mask
from ...errors import AdapterError

PROMPT_KEY = "prompt"
EMBEDDED_KEY = "embedded_prompt"  # PromptTuning(insert="embedded"): after the embedding block


def continues(kwargs: dict) -> bool:
    """A call that brings a cache continues a sequence whose soft tokens are already in it.

    ``generate`` passes its cache as ``past_key_values`` up to transformers 5.23 and as ``cache`` from 5.24;
    a caller may use either name on 5.24+.
    """
    return given_cache(kwargs) is not None


def set_positions(anatomy: Anatomy, kwargs: dict, visible: torch.Tensor, mask: torch.Tensor, length: int,
                  in_sequence: bool, what: str) -> None:
    """Positions that skip masked slots, where the model takes them (rotary and learned ones need it).

    ``in_sequence``: the soft slots are part of this call's sequence (a prompt), not of its cache.
    On a model that numbers positions itself ("fixed"), rows of different soft lengths are refused:
    that check reads ``visible`` on the host once per call (``bool(visible.all())``), a synchronisation
    the serving path of such models pays.
    """
    mode = anatomy.positions
    if mode == "explicit":
        given = kwargs.get("position_ids")
        if given is None:
            kwargs["position_ids"] = positions_from_mask(mask, length)
        else:  # the caller's positions, after the visible soft slots
            moved = given + visible.sum(1, keepdim=True)
            soft = positions_from_mask(visible, visible.shape[1])
            kwargs["position_ids"] = torch.cat([soft, moved], 1) if in_sequence else moved
    elif mode == "fixed" and not bool(visible.all()):
        raise AdapterError(
            f"Rows with {what} of different lengths cannot share a batch on model_type "
            f"{anatomy.model_type!r}: it numbers positions itself and cannot be told to skip the unused "
            "slots. Batch rows of equal prompt length together."
        )
