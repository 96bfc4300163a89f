from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_tru.datamodules import SyntheticDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.nn import MGCN, LightGCN


def _module(dm: SyntheticDataModule, backbone: type = MGCN, **kw: object) -> RecommenderModule:
    return RecommenderModule(
        partial(backbone, embedding_dim=16, **kw), dm.num_users, dm.num_items, dm.feature_dims,
        optimizer=partial(torch.optim.Adam, lr=5e-3),
    )


def _trainer(**kw: object) -> Trainer:
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("backbone", [LightGCN, MGCN])
def test_training_improves_valid_recall(small_dm: SyntheticDataModule, backbone: type) -> None:
    seed_everything(0)
    model = _module(small_dm, backbone)
    before = _trainer().validate(model, datamodule=small_dm, verbose=False)[0]["val/recall@20"]
    _trainer(max_epochs=8).fit(model, datamodule=small_dm)
    after = _trainer().validate(model, datamodule=small_dm, verbose=False)[0]["val/recall@20"]
    assert after > before + 0.05


def test_training_is_reproducible(small_dm: SyntheticDataModule) -> None:
    params = []
    for _ in range(2):
        seed_everything(7)
        model = _module(small_dm)
        _trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(model, datamodule=small_dm)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])


def test_eval_matches_manual_full_ranking(small_dm: SyntheticDataModule) -> None:
    from lightning_tru.metrics import recall_at_k

    seed_everything(0)
    model = _module(small_dm)
    res = _trainer().test(model, datamodule=small_dm, verbose=False)[0]
    model.attach(small_dm)
    data = small_dm.data
    excl = torch.tensor((data.csr("train") + data.csr("valid")).toarray() > 0)
    target = torch.tensor(data.csr("test").toarray() > 0)
    with torch.no_grad():
        u, i = model.backbone.embeddings()
    top = torch.topk((u @ i.T).masked_fill(excl, float("-inf")), 20, dim=1).indices
    assert res["test/recall@20"] == pytest.approx(recall_at_k(top, target, 20).item(), rel=1e-5)


def test_checkpoint_carries_model_signature(small_dm: SyntheticDataModule, tmp_path) -> None:
    model = _module(small_dm)
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=small_dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert ckpt["lightning_tru"]["backbone"] == "lightning_tru.nn.mgcn.MGCN"
    assert ckpt["lightning_tru"]["num_users"] == small_dm.num_users


def test_attach_rejects_data_of_another_size(small_dm: SyntheticDataModule) -> None:
    other = SyntheticDataModule(num_users=100, num_items=150, seed=1)
    with pytest.raises(ValueError, match="sized for 300 users"):
        _module(small_dm).attach(other)
