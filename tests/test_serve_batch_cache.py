"""The running batch's key/value cache: rows join and leave with one copy of the tensors, never two."""

from __future__ import annotations

import torch

from splice.serve.batch_cache import BatchCache, build, layers_of


def test_build_holds_the_tensors_themselves_and_the_model_can_append_to_them():
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    cache = build([(keys, values), (keys + 1, values + 1)])
    held = layers_of(cache)
    assert held[0][0].data_ptr() == keys.data_ptr() and held[0][1].data_ptr() == values.data_ptr()
    assert cache.get_seq_length() == 5
    grown_keys, _ = cache.update(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4), 0)  # what a decode step does
    assert grown_keys.shape == (2, 3, 6, 4) and torch.equal(grown_keys[:, :, :5], keys)
    assert torch.equal(layers_of(cache)[1][0], keys + 1)


def test_select_and_join_keep_each_rows_columns_right_aligned():
    a = BatchCache(build([(torch.ones(1, 1, 2, 1), torch.ones(1, 1, 2, 1))]), torch.ones(1, 2, dtype=torch.long))
    b = BatchCache(build([(torch.full((1, 1, 4, 1), 2.0),) * 2]), torch.ones(1, 4, dtype=torch.long))
    both = BatchCache.join([a, b])
    assert both.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert layers_of(both.cache)[0][0][:, 0, :, 0].tolist() == [[0, 0, 1, 1], [2, 2, 2, 2]]
    only_a = both.select([0])  # the columns no row holds any more are cut
    assert only_a.mask.tolist() == [[1, 1]] and layers_of(only_a.cache)[0][0].shape[2] == 2
