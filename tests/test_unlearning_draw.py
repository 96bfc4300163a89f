"""The unlearning datamodule's per-step draws cost the batch, not the data set: `choose`, the negative samplers'
keys and the views built on first use."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_tru.datamodules import InteractionData, RecDataModule, UnlearningDataModule
from lightning_tru.datamodules.datasets import BPRDataset
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import PERMUTE_UP_TO, choose


@pytest.mark.parametrize("n,size", [(20, 5), (20, 15), (7, 7), (1000, 3), (100, 4)])
def test_choose_draws_a_uniform_subset(n: int, size: int) -> None:
    """Distinct indices in range, the same for the same seed, each index drawn with probability size / n; a
    permutation's prefix up to ``PERMUTE_UP_TO * size`` (as before), the O(size) draw above (1000 x 3, 100 x 4)."""
    if n <= PERMUTE_UP_TO * size:
        assert torch.equal(choose(n, size, torch.Generator().manual_seed(3)),
                           torch.randperm(n, generator=torch.Generator().manual_seed(3))[:size])
    counts = np.zeros(n)
    draws = 3000
    for s in range(draws):
        idx = choose(n, size, torch.Generator().manual_seed(s))
        assert len(idx) == size and len(torch.unique(idx)) == size and int(idx.min()) >= 0 and int(idx.max()) < n
        counts[idx.numpy()] += 1
    assert torch.equal(choose(n, size, torch.Generator().manual_seed(1)), choose(n, size, torch.Generator().manual_seed(1)))
    p = size / n
    se = np.sqrt(draws * p * (1 - p)) + 1e-9
    assert np.abs(counts - draws * p).max() <= 5 * se, (counts, draws * p)
    with pytest.raises(ValueError, match="size"):
        choose(n, n + 1, torch.Generator())


def test_samplers_keys_and_lazy_views(tiny_data: InteractionData) -> None:
    """The negative samplers' keys are the BPR datasets' (no sort of every pair), negatives avoid the right items, and
    the deployed view and the gate's seen matrix are built on first use, equal to their definitions."""
    source = RecDataModule(tiny_data, batch_size=4)
    for regime in ("user", "interaction"):
        udm = UnlearningDataModule(source, ForgetRequest(regime, 0.25, seed=2), retain_batch_size=3, seed=0)
        assert "deployed" not in udm.__dict__ and "seen_matrix" not in udm.__dict__
        n_items = source.num_items
        assert torch.equal(udm._train_keys, BPRDataset(source.train_pairs(), n_items).keys)
        assert torch.equal(udm._retain_keys, BPRDataset(udm.forget.retain_pairs, n_items).keys)
        train = source.data.csr("train").toarray() > 0
        retained = udm.retained_train_csr().toarray() > 0
        users = torch.from_numpy(np.repeat(np.arange(source.num_users), 50))
        fn = udm.forget_negatives(users, torch.Generator().manual_seed(0)).numpy()
        rn = udm.retain_negatives(users, torch.Generator().manual_seed(0)).numpy()
        full = train.all(1)[users.numpy()]  # a user with every item has no negative: skip
        assert not train[users.numpy(), fn][~full].any() and not retained[users.numpy(), rn][~retained.all(1)[users.numpy()]].any()
        batch = udm.make_batch(3, 0)
        assert len(batch.retain_users) == 3 and torch.equal(batch.retain_users, udm.make_batch(3, 0).retain_users)
        assert np.array_equal(udm.deployed.data.pairs, source.without(udm.forget, graph_surgery=False).data.pairs)
        assert (udm.seen_matrix.toarray() > 0).tolist() == (retained | (udm.forget_csr().toarray() > 0)).tolist()
