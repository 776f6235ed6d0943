"""The scheduler's sampler: one batched inverse-CDF draw per step, each row with its own settings and generator."""

from __future__ import annotations

import torch

from splice.serve.generation import Row
from splice.serve.sampling import choose, generator_for, inverse_cdf


def test_inverse_cdf_draws_follow_the_distribution_and_never_a_zero_probability_token():
    torch.manual_seed(0)
    logprobs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 1.0, 0.0]]).log()  # zeros: -inf
    draws = 20000
    tokens = inverse_cdf(logprobs.repeat(draws, 1), torch.rand(2 * draws), torch.zeros(2 * draws, dtype=torch.long))
    first, second = tokens[0::2], tokens[1::2]
    shares = torch.bincount(first, minlength=4).float() / draws
    assert torch.allclose(shares, torch.tensor([0.5, 0.0, 0.3, 0.2]), atol=0.015), shares
    assert bool((second == 2).all())
    # the edges of [0, 1): 0 takes the first token with probability; a draw rounded past the end, the fallback
    edges = inverse_cdf(logprobs[:1].repeat(2, 1), torch.tensor([0.0, 1.0]), torch.tensor([7, 7]))
    assert edges.tolist() == [0, 7]


def test_seeded_rows_draw_the_same_tokens_whatever_their_neighbours():
    logits = torch.randn(3, 50)

    def draw(rows: list[Row], seeds: list[int | None]) -> list[list[int]]:
        generators = [generator_for(seed, torch.device("cpu")) for seed in seeds]
        return [choose(logits[:len(rows)], rows, generators) for _ in range(5)]

    alone = draw([Row([1], "a", 5, temperature=0.8)], [7])
    crowded = draw([Row([1], "a", 5, temperature=0.8), Row([1], "b", 5), Row([1], "c", 5, temperature=0)],
                   [7, None, None])
    assert [step[0] for step in alone] == [step[0] for step in crowded]
    assert all(step[2] == int(logits[2].argmax()) for step in crowded)  # the greedy row


def test_logprobs_are_recorded_only_for_rows_that_ask_and_match_the_sampled_distribution():
    logits = torch.randn(2, 30)
    asks, quiet = Row([1], "a", 5, temperature=0.5, logprobs=2), Row([1], "b", 5, temperature=0.5)
    token = choose(logits, [asks, quiet], [None, None])[0]
    expected = (logits[0] / 0.5).log_softmax(-1)
    assert quiet.scores == []
    logprob, top = asks.scores[0]
    assert abs(logprob - float(expected[token])) < 1e-5
    assert set(top) == set(expected.topk(2).indices.tolist())
