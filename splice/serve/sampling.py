"""Choosing each row's next token from the logits of one step, and the log-probabilities reported for it.

Every row samples with its own temperature, top-p and (given a ``seed``) its own
random generator, so a seeded row draws the same tokens whichever rows share its batch.

The log-probabilities reported (``logprobs``) are those of the distribution the token
was drawn from: the log-softmax of ``logits / temperature`` restricted to the top-p
nucleus (tokens outside it are left out of ``top_logprobs``). Greedy rows
(temperature 0) draw from a point mass, which says nothing; they report the model's
own distribution (temperature 1, no nucleus), as OpenAI's API does. Prompt tokens
(``echo``) are never sampled: they get the model's own log-softmax too.
"""

from __future__ import annotations

import torch

from .generation import Row, nucleus


def generator_for(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator seeded with ``seed`` on ``device``; None (the global one) without a seed."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def choose(logits: torch.Tensor, rows: list[Row], generators: list[torch.Generator | None]) -> list[int]:
    """The next token of each row from ``logits`` ``[rows, vocab]``; records logprobs where rows ask for them."""
    logits = logits.float()  # a small temperature must not overflow half-precision logits to inf
    temperature = torch.tensor([r.temperature if r.temperature > 0 else 1.0 for r in rows], device=logits.device)
    top_p = torch.tensor([r.top_p if r.temperature > 0 else 1.0 for r in rows], device=logits.device)
    scores = nucleus(logits / temperature.unsqueeze(1), top_p.unsqueeze(1))
    logprobs = scores.log_softmax(dim=-1)
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for i, (row, generator) in enumerate(zip(rows, generators)):
        if row.temperature == 0:
            tokens.append(greedy[i])
        else:
            tokens.append(int(torch.multinomial(logprobs[i].exp(), 1, generator=generator)))
    for i, row in enumerate(rows):
        if row.logprobs is not None:
            row.scores.append(scored(logprobs[i], tokens[i], row.logprobs))
    return tokens


def scored(logprobs: torch.Tensor, token: int, top: int) -> tuple[float, dict[int, float]]:
    """``token``'s log-probability and the ``top`` most likely tokens' (those with a finite one), from ``[vocab]``."""
    values, ids = logprobs.topk(min(top, logprobs.shape[-1])) if top else (logprobs[:0], logprobs[:0].long())
    alternatives = {int(t): float(v) for t, v in zip(ids.tolist(), values.tolist()) if v != float("-inf")}
    return float(logprobs[token]), alternatives


def prompt_scores(logits: torch.Tensor, ids: list[int], top: int) -> list[tuple[float, dict[int, float]] | None]:
    """Each prompt token's log-probability given the tokens before it (``echo``); None for the first, which has
    no context. ``logits`` ``[len(ids), vocab]`` are the prompt's own."""
    logprobs = logits.float().log_softmax(dim=-1)
    return [None] + [scored(logprobs[i - 1], ids[i], top) for i in range(1, len(ids))]
