import numpy as np
import torch

from lightning_tru.datamodules import BPRDataset, InteractionData, RankingDataset, RecDataModule, SyntheticDataModule


def test_sizes_known_after_init() -> None:
    dm = SyntheticDataModule(num_users=50, num_items=40, modality_dims={"a": 3, "b": 5, "c": 2},
                             modality_noise={"a": 0.1, "b": 1.0, "c": 2.0}, mean_interactions=8)
    assert (dm.num_users, dm.num_items) == (50, 40)
    assert dm.feature_dims == {"a": 3, "b": 5, "c": 2}


def test_bpr_negatives_are_outside_the_train_set(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    pairs = tiny_data.split_pairs("train")
    ds = BPRDataset(pairs, tiny_data.num_items)
    train = {(int(u), int(i)) for u, i in pairs}
    users, pos, neg = ds.__getitems__(list(range(len(ds))) * 20)
    assert all((int(u), int(p)) in train for u, p in zip(users, pos))
    assert not any((int(u), int(n)) in train for u, n in zip(users, neg))
    # uniform over the allowed items: every allowed item of user 0 shows up
    allowed0 = set(range(12)) - {i for u, i in train if u == 0}
    assert {int(n) for u, n in zip(users, neg) if u == 0} == allowed0


def test_bpr_sampling_is_seeded(tiny_data: InteractionData) -> None:
    ds = BPRDataset(tiny_data.split_pairs("train"), tiny_data.num_items)
    torch.manual_seed(3)
    a = ds.__getitems__(list(range(len(ds))))[2]
    torch.manual_seed(3)
    b = ds.__getitems__(list(range(len(ds))))[2]
    assert torch.equal(a, b)


def test_train_loader_batches(tiny_data: InteractionData) -> None:
    dm = RecDataModule(tiny_data, batch_size=10)
    batches = list(dm.train_dataloader())
    assert sum(len(b[0]) for b in batches) == 32 and all(len(b) == 3 for b in batches)


def test_ranking_batches_mask_the_right_items(tiny_data: InteractionData) -> None:
    dm = RecDataModule(tiny_data, eval_batch_size=3)
    train = tiny_data.csr("train").toarray().astype(bool)
    valid = tiny_data.csr("valid").toarray().astype(bool)
    test = tiny_data.csr("test").toarray().astype(bool)
    seen = []
    for users, exclude, target in dm.val_dataloader():
        assert np.array_equal(exclude.numpy(), train[users.numpy()])
        assert np.array_equal(target.numpy(), valid[users.numpy()])
        seen += users.tolist()
    assert seen == list(range(8))
    for users, exclude, target in dm.test_dataloader():
        assert np.array_equal(exclude.numpy(), (train | valid)[users.numpy()])
        assert np.array_equal(target.numpy(), test[users.numpy()])


def test_ranking_dataset_skips_users_without_targets(tiny_data: InteractionData) -> None:
    target = tiny_data.csr("valid")
    target[2] = 0
    target.eliminate_zeros()
    ds = RankingDataset(tiny_data.csr("train"), target)
    assert 2 not in ds.users.tolist() and len(ds) == 7
