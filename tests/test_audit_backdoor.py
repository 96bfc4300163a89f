"""Backdoor: the poisoning transform, and the promotion before / after graph surgery / Retrain on a
graph backbone (LightGCN) and an ID-only one (MF)."""
from __future__ import annotations

import copy
from functools import lru_cache, partial

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from _audit_setup import fit
from lightning_tru.audit.backdoor import attack_success, fake_user_request, poison
from lightning_tru.callbacks import TRU
from lightning_tru.callbacks.reset import deleted_entities
from lightning_tru.datamodules import RecDataModule
from lightning_tru.datamodules.interactions import TRAIN
from lightning_tru.datamodules.synthetic import make_synthetic
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.models.unlearning import UnlearningTask
from lightning_tru.nn import MF, LightGCN


@lru_cache(maxsize=1)
def _clean():  # type: ignore[no-untyped-def]
    return make_synthetic(num_users=300, num_items=150, seed=1)


def test_poison_appends_fake_users_with_an_unpopular_target() -> None:
    data = _clean()
    p = poison(data, share=0.03, num_fillers=10, seed=0)
    assert p.data.num_users == data.num_users + 9 and np.array_equal(p.fake_users, np.arange(300, 309))
    assert np.array_equal(p.data.pairs[: len(data.pairs)], data.pairs)  # the clean data is untouched
    fake = p.data.pairs[len(data.pairs):]
    assert (p.data.split[len(data.pairs):] == TRAIN).all()
    for u in p.fake_users:
        items = fake[fake[:, 0] == u, 1]
        assert items[0] == p.target and len(items) == 11 and len(np.unique(items)) == 11
    pop = np.bincount(data.split_pairs(TRAIN)[:, 1], minlength=150)
    assert pop[p.target] <= np.quantile(pop, 0.2)
    assert poison(data, share=0.03, num_fillers=10, seed=0).target == p.target  # seeded
    request = fake_user_request(p)
    assert np.array_equal(request.users, p.fake_users) and len(request.forget_pairs) == len(fake)
    with pytest.raises(ValueError, match="share"):
        poison(data, share=0.0)
    with pytest.raises(ValueError, match="not an item id"):
        poison(data, target=150)


@pytest.mark.parametrize("backbone", ["lightgcn", "mf"])
def test_promotion_before_surgery_reset_and_retrain(backbone: str) -> None:
    torch.set_num_threads(1)
    data = _clean()
    p = poison(data, share=0.15, num_fillers=30, seed=0)
    dm = RecDataModule(p.data, batch_size=1024, eval_batch_size=300)
    udm = UnlearningDataModule(dm, fake_user_request(p), seed=0)
    make = partial(LightGCN, embedding_dim=16, num_layers=2) if backbone == "lightgcn" else partial(MF, embedding_dim=16)
    seed_everything(0, verbose=False)
    initial = RecommenderModule(make, dm.num_users, dm.num_items, dm.feature_dims,
                                optimizer=partial(torch.optim.Adam, lr=2e-2))
    trained = fit(copy.deepcopy(initial), dm, 30)
    normal, known = np.arange(data.num_users), p.data.csr("train", "valid", "test")
    success = partial(attack_success, target=p.target, interactions=known, users=normal, k=20)
    before = success(trained, exclude=p.data.csr("train"))
    surgery = copy.deepcopy(trained)
    surgery.attach(udm)
    reset = copy.deepcopy(surgery)
    users, _ = deleted_entities(udm)
    with torch.no_grad():
        reset.backbone.user_embedding.weight[users] = initial.backbone.user_embedding.weight[users]
    retrain = fit(copy.deepcopy(initial), udm.retained, 30)
    tru, cb = copy.deepcopy(trained), TRU()
    cb.use_initial(initial)
    tru.train()
    Trainer(max_epochs=200, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", callbacks=[cb]).fit(UnlearningTask(tru), datamodule=udm)
    excl = udm.retained_train_csr()
    after = {n: success(m, exclude=excl)
             for n, m in (("surgery", surgery), ("reset", reset), ("retrain", retrain), ("tru", tru))}
    print(f"{backbone}: attack success@20 before {before:.3f}, {after}")
    assert before > 0.2 and after["retrain"] < 0.05  # the backdoor works, Retrain removes it
    # TRU re-fits the rows of items that lost most of their interactions (the target): the promotion goes
    assert after["tru"] <= after["retrain"] + 0.05 and cb.refit.get("items", 0) > 0 and "items_undone" not in cb.refit
    if backbone == "mf":  # no graph: surgery changes nothing; the promotion lives in the target's row
        assert after["surgery"] == before and after["reset"] > 0.2
    else:  # on the graph backbone surgery alone removes most of it
        assert after["surgery"] < 0.25 * before
