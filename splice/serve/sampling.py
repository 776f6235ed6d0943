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
    """The next token of each row from ``logits`` ``[rows, vocab]``; records logprobs where rows ask for them.

    Sampled rows draw by inverting their cumulative distribution at one uniform number each: one
    ``cumsum`` and one ``searchsorted`` for the whole batch. ``torch.multinomial`` row by row (it cannot take
    a generator per row) cost SmolLM2 about 4 ms a row on a CPU core (49 152 tokens), a tenth of a decode step."""
    logits = logits.float()  # a small temperature must not overflow half-precision logits to inf
    greedy = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.temperature > 0]
    wanted = [i for i, row in enumerate(rows) if row.logprobs is not None]
    tokens = greedy.clone()
    logprobs = None
    if sampled or wanted:
        temperature = torch.tensor([r.temperature if r.temperature > 0 else 1.0 for r in rows], device=logits.device)
        top_p = torch.tensor([r.top_p if r.temperature > 0 else 1.0 for r in rows], device=logits.device)
        logprobs = nucleus(logits / temperature.unsqueeze(1), top_p.unsqueeze(1)).log_softmax(dim=-1)
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        uniform = torch.cat([torch.rand(1, generator=generators[i], device=logits.device) for i in sampled])
        tokens[index] = inverse_cdf(logprobs.index_select(0, index), uniform, greedy.index_select(0, index))
    tokens = tokens.tolist()
    for i in wanted:
        rows[i].scores.append(scored(logprobs[i], tokens[i], rows[i].logprobs))
    return tokens


def inverse_cdf(logprobs: torch.Tensor, uniform: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Per row of ``logprobs`` ``[rows, vocab]``, the token whose cumulative probability first exceeds its
    ``uniform`` number in [0, 1): a draw from the row's distribution, each token's share exact to float32 rounding
    of the running sum (about 1e-7). A draw that rounding puts past the end takes ``fallback`` (the argmax)."""
    cumulative = logprobs.exp().cumsum(dim=-1)
    target = uniform.unsqueeze(1) * cumulative[:, -1:]
    # right=True: the first index whose cumulative sum is strictly above the target has a probability above 0
    drawn = torch.searchsorted(cumulative, target, right=True).squeeze(1)
    return torch.where(drawn < logprobs.shape[-1], drawn, fallback)


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
