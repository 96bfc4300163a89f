"""Feature-derived structures are built once per data set: graph surgery replaces only the user-item graph."""
from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from lightning.pytorch import Trainer, seed_everything

import lightning_tru.nn.graph as graph_ops
import lightning_tru.nn.mgcn as mgcn_mod
from lightning_tru.datamodules import ForgetRequest, SyntheticDataModule, UnlearningDataModule
from lightning_tru.datamodules.content import ItemContent
from lightning_tru.models import RecommenderModule
from lightning_tru.models.retrain import retrain
from lightning_tru.nn import MGCN


@pytest.fixture
def knn_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every kNN item-graph build, wherever it is called from (one entry per modality built)."""
    calls: list[int] = []
    real = graph_ops.knn_graph

    def counting(features, k=10, chunk=2048):  # type: ignore[no-untyped-def]
        calls.append(int(k))
        return real(features, k, chunk)

    monkeypatch.setattr(graph_ops, "knn_graph", counting)
    monkeypatch.setattr(mgcn_mod, "knn_graph", counting)
    return calls


def _module(dm: SyntheticDataModule) -> RecommenderModule:
    return RecommenderModule(partial(MGCN, embedding_dim=8, knn_k=5), dm.num_users, dm.num_items, dm.feature_dims)


def _trainer(**kw: object) -> Trainer:
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", **kw)  # type: ignore[arg-type]


def test_knn_graphs_built_once_across_surgery_evaluation_and_retrain(knn_calls: list[int]) -> None:
    seed_everything(0)
    dm = SyntheticDataModule(num_users=80, num_items=60, mean_interactions=6.0, seed=3, batch_size=128)
    initial = _module(dm)
    model = _module(dm)
    _trainer(max_epochs=1, limit_val_batches=1).fit(model, datamodule=dm)
    _trainer().validate(model, datamodule=dm, verbose=False)
    assert knn_calls == [5, 5]  # image and text, once each
    graphs_before = dict(model.backbone.item_graphs)
    nnz_before = model.backbone.adj.nnz

    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.2, seed=1))
    model.attach(udm)  # graph surgery
    assert model.backbone.adj.nnz < nnz_before  # the user-item graph was replaced ...
    assert all(model.backbone.item_graphs[m] is g for m, g in graphs_before.items())  # ... the item graphs were not
    model.attach(udm.deployed)  # evaluation on the original graph
    assert model.backbone.adj.nnz == nnz_before
    _trainer().validate(model, datamodule=udm.retained, verbose=False)
    retrain(initial, udm.retained, max_epochs=1, patience=1, accelerator="cpu")
    assert knn_calls == [5, 5]


def test_other_features_are_attached_and_built(knn_calls: list[int]) -> None:
    a = SyntheticDataModule(num_users=30, num_items=20, mean_interactions=5.0, seed=1)
    b = SyntheticDataModule(num_users=30, num_items=20, mean_interactions=5.0, seed=2)
    model = _module(a)
    model.attach(a)
    first = model.backbone.item_graphs["image"].to_scipy().toarray()
    model.attach(b)  # new data set: its own features and kNN graphs
    assert len(knn_calls) == 4
    assert torch.equal(model.backbone.feat_image, b.feature_tensors()["image"])
    second = model.backbone.item_graphs["image"].to_scipy().toarray()
    np.testing.assert_allclose(second, graph_ops.knn_graph(b.feature_tensors()["image"], 5).toarray())
    assert not np.allclose(first, second)


def test_item_content_caches_per_k_and_prefers_precomputed(knn_calls: list[int]) -> None:
    rng = np.random.default_rng(0)
    f = {"image": rng.standard_normal((9, 4)).astype(np.float32), "text": rng.standard_normal((9, 3)).astype(np.float32)}
    pre = sp.identity(9, format="csr", dtype=np.float32)
    content = ItemContent(f, {"text": pre})
    assert content.item_graphs() == {"text": pre}  # no k: precomputed only, nothing built
    g3 = content.item_graphs(3)
    assert g3["text"] is pre and content.item_graphs(3)["image"] is g3["image"]
    assert (np.diff(g3["image"].indptr) >= 3).all()
    content.item_graphs(4)
    assert knn_calls == [3, 4]
    assert content.feature_tensors()["image"] is content.feature_tensors()["image"]
    with pytest.raises(ValueError, match="knn_k=0 must be an integer >= 1"):
        content.item_graphs(0)
