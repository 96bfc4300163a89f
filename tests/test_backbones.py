from typing import Any

import numpy as np
import pytest
import torch

from lightning_tru.datamodules import InteractionData
from lightning_tru.nn import MGCN, LightGCN
from lightning_tru.nn.base import edge_index_from_pairs


def _dense_adj(data: InteractionData) -> torch.Tensor:
    nu, ni = data.num_users, data.num_items
    r = torch.tensor(data.csr("train").toarray())
    a = torch.zeros(nu + ni, nu + ni)
    a[:nu, nu:] = r
    a[nu:, :nu] = r.T
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return d[:, None] * a * d[None, :]


def _features(data: InteractionData) -> dict[str, torch.Tensor]:
    return {m: torch.from_numpy(f) for m, f in data.features.items()}


def _assert_training_losses_are_the_full_terms(model: Any, users: torch.Tensor, pos: torch.Tensor,
                                               neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model.training_losses`` equals BPR over the full propagation + the auxiliary terms (values and gradients);
    returns the reference terms."""
    from lightning_tru.nn.losses import bpr_loss

    full = model.propagate()
    ref = {"bpr": bpr_loss(model.score(users, pos, full), model.score(users, neg, full)),
           **model.auxiliary_losses(full, users, pos, neg)}
    got = model.training_losses(users, pos, neg)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    params = list(model.parameters())
    g_ref = torch.autograd.grad(sum(ref.values()), params)  # type: ignore[arg-type]
    g_got = torch.autograd.grad(sum(model.training_losses(users, pos, neg).values()), params)  # type: ignore[arg-type]
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b)
    return ref


def test_lightgcn_matches_dense_reference(tiny_data: InteractionData) -> None:
    torch.manual_seed(0)
    model = LightGCN(8, 12, None, embedding_dim=5, num_layers=3)
    model.set_graph(edge_index_from_pairs(tiny_data.split_pairs("train")))
    a = _dense_adj(tiny_data)
    x = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    layers = [x]
    for _ in range(3):
        layers.append(a @ layers[-1])
    ref = torch.stack(layers).mean(0)
    user, item = model.embeddings()
    torch.testing.assert_close(torch.cat([user, item]), ref, rtol=1e-5, atol=1e-6)


def _mgcn_reference(model: MGCN, data: InteractionData) -> torch.Tensor:
    """MGCN written densely for two modalities, following MMRec's forward pass."""
    nu, ni = data.num_users, data.num_items
    a = _dense_adj(data)
    r = a[:nu, nu:]
    x = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
    content = (x + a @ x + a @ (a @ x)) / 3
    views = []
    for m in ("image", "text"):
        f = torch.from_numpy(data.features[m])
        fn = torch.nn.functional.normalize(f, dim=1)
        s = torch.zeros(ni, ni)
        s.scatter_(1, torch.topk(fn @ fn.T, model.knn_k, dim=1).indices, 1.0)
        d = s.sum(1).pow(-0.5)
        s = d[:, None] * s * d[None, :]
        lin, gate = model.transform[m], model.gate[m][0]
        h = model.item_id_embedding.weight * torch.sigmoid(gate(lin(f)))
        h = s @ h
        views.append(torch.cat([r @ h, h]))
    att = torch.softmax(torch.cat([model.query_common(v) for v in views], dim=1), dim=1)
    common = att[:, :1] * views[0] + att[:, 1:] * views[1]
    sep = [torch.sigmoid(model.prefer[m][0](content)) * (v - common) for m, v in zip(("image", "text"), views)]
    return content + (sep[0] + sep[1] + common) / 3


def _mgcn(data: InteractionData, **kw: object) -> MGCN:
    torch.manual_seed(0)
    model = MGCN(data.num_users, data.num_items, data.feature_dims, embedding_dim=6, knn_k=3, **kw)  # type: ignore[arg-type]
    model.set_graph(edge_index_from_pairs(data.split_pairs("train")))
    model.set_features(_features(data))
    return model


def test_mgcn_matches_dense_reference(tiny_data: InteractionData) -> None:
    model = _mgcn(tiny_data)
    user, item = model.embeddings()
    torch.testing.assert_close(torch.cat([user, item]), _mgcn_reference(model, tiny_data), rtol=1e-4, atol=1e-6)


def test_mgcn_any_number_of_modalities(tiny_data: InteractionData) -> None:
    rng = np.random.default_rng(1)
    for names in (["image"], ["image", "text", "audio"]):
        feats = {m: rng.standard_normal((12, 3)).astype(np.float32) for m in names}
        data = InteractionData(8, 12, tiny_data.pairs, tiny_data.split, feats)
        model = _mgcn(data)
        p = model.propagate()
        assert set(p.branches) == {"id", "fusion", *names}
        assert p.user.shape == (8, 6) and p.item.shape == (12, 6)


@pytest.mark.parametrize("backbone", ["lightgcn", "mgcn"])
def test_branches_sum_to_embeddings_and_scores(tiny_data: InteractionData, backbone: str) -> None:
    model = _mgcn(tiny_data) if backbone == "mgcn" else LightGCN(8, 12, embedding_dim=6)
    model.set_graph(edge_index_from_pairs(tiny_data.split_pairs("train")))
    p = model.propagate()
    torch.testing.assert_close(sum(u for u, _ in p.branches.values()), p.user)
    torch.testing.assert_close(sum(i for _, i in p.branches.values()), p.item)
    users, items = torch.tensor([0, 3, 7]), torch.tensor([1, 5, 11])
    parts = model.branch_scores(users, items, p)
    torch.testing.assert_close(sum(parts.values()), model.score(users, items, p))
    # every parameter belongs to exactly one branch
    named = [n for n, _ in model.named_parameters()]
    grouped = [n for g in model.branch_parameters().values() for n in g]
    assert sorted(grouped) == sorted(named)
    assert sorted(n for g in model.layer_parameters().values() for n in g) == sorted(named)


def test_mgcn_auxiliary_losses_and_gradients(tiny_data: InteractionData) -> None:
    model = _mgcn(tiny_data, cl_weight=0.5)
    p = model.propagate()
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
    aux = model.auxiliary_losses(p, users, pos, neg)
    assert set(aux) == {"l2", "cl"} and all(v.item() > 0 for v in aux.values())
    sum(aux.values()).backward()  # type: ignore[union-attr]
    assert all(prm.grad is not None for prm in model.parameters())


def test_mgcn_contrastive_term_is_the_repeated_batch_infonce(tiny_data: InteractionData) -> None:
    from lightning_tru.nn.losses import info_nce

    model = _mgcn(tiny_data, cl_weight=0.5)
    p = model.propagate()
    users, pos, neg = torch.tensor([0, 1, 0, 0, 5]), torch.tensor([3, 3, 4, 3, 9]), torch.tensor([6, 7, 8, 1, 2])
    side, content = p.extras["side"], p.extras["content"]
    nu = tiny_data.num_users
    naive = info_nce(side[nu + pos], content[nu + pos], 0.2) + info_nce(side[users], content[users], 0.2)
    torch.testing.assert_close(model.auxiliary_losses(p, users, pos, neg)["cl"], 0.5 * naive)


@pytest.mark.parametrize("ui,ii", [(2, 1), (0, 1), (1, 0), (3, 2)])
def test_mgcn_training_propagation_is_exact_on_the_batch_rows(tiny_data: InteractionData, ui: int, ii: int) -> None:
    from lightning_tru.nn.losses import bpr_loss

    model = _mgcn(tiny_data, cl_weight=0.5, num_ui_layers=ui, num_ii_layers=ii)
    users, pos, neg = torch.tensor([0, 1, 0, 5]), torch.tensor([3, 3, 4, 9]), torch.tensor([6, 7, 8, 3])

    def loss(p):  # type: ignore[no-untyped-def]
        s = bpr_loss(model.score(users, pos, p), model.score(users, neg, p))
        return s + sum(model.auxiliary_losses(p, users, pos, neg).values())

    full, part = model.propagate(), model.training_propagation(users, torch.cat([pos, neg]))
    items = torch.cat([pos, neg])
    torch.testing.assert_close(part.user[users], full.user[users])
    torch.testing.assert_close(part.item[items], full.item[items])
    for b, (bu, bi) in full.branches.items():
        torch.testing.assert_close(part.branches[b][0][users], bu[users])
        torch.testing.assert_close(part.branches[b][1][items], bi[items])
    off = torch.ones(tiny_data.num_users, dtype=torch.bool)
    off[users] = False
    assert part.user[off].abs().sum() == 0 and full.user[off].abs().sum() > 0  # rows off the batch are not computed
    g_full = torch.autograd.grad(loss(full), list(model.parameters()))
    g_part = torch.autograd.grad(loss(model.training_propagation(users, items)), list(model.parameters()))
    for a, b in zip(g_part, g_full):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("ui", [2, 0])
def test_mgcn_training_losses_equal_the_full_propagation_terms(tiny_data: InteractionData, ui: int) -> None:
    """MGCN's batch-row training losses (never expanded to (U+I, d)) equal BPR + auxiliary terms over the full
    propagation, values and gradients; inside ``sampling`` they are the base class's (the sampled estimate)."""
    from lightning_tru.nn.base import Backbone

    model = _mgcn(tiny_data, cl_weight=0.5, num_ui_layers=ui)
    users, pos, neg = torch.tensor([0, 1, 0, 5, 7]), torch.tensor([3, 3, 4, 9, 0]), torch.tensor([6, 7, 8, 3, 11])
    ref = _assert_training_losses_are_the_full_terms(model, users, pos, neg)
    with model.sampling(2, torch.Generator().manual_seed(0)):
        sampled = model.training_losses(users, pos, neg)
    with model.sampling(2, torch.Generator().manual_seed(0)):
        base = Backbone.training_losses(model, users, pos, neg)
    for k in ref:
        torch.testing.assert_close(sampled[k], base[k])
    assert not torch.allclose(sampled["bpr"], ref["bpr"])  # the estimate, not the exact rows


@pytest.mark.parametrize("layers", [3, 1, 0])
def test_lightgcn_training_losses_equal_the_full_propagation_terms(tiny_data: InteractionData, layers: int) -> None:
    """LightGCN's training losses (Backbone.training_losses) equal BPR over the full propagation + L2, values and gradients."""
    torch.manual_seed(0)
    model = LightGCN(8, 12, embedding_dim=5, num_layers=layers)
    model.set_graph(edge_index_from_pairs(tiny_data.split_pairs("train")))
    users, pos, neg = torch.tensor([0, 1, 0, 5, 7]), torch.tensor([3, 3, 4, 9, 0]), torch.tensor([6, 7, 8, 3, 11])
    _assert_training_losses_are_the_full_terms(model, users, pos, neg)


def test_backbone_input_errors(tiny_data: InteractionData) -> None:
    with pytest.raises(ValueError, match="at least one modality"):
        MGCN(8, 12, {})
    with pytest.raises(ValueError, match="num_users"):
        LightGCN(0, 12)
    model = MGCN(8, 12, {"image": 4, "text": 6})
    with pytest.raises(RuntimeError, match="set_graph"):
        model.propagate()
    with pytest.raises(ValueError, match="lacks"):
        model.set_features({"image": torch.zeros(12, 4)})
    with pytest.raises(ValueError, match="expects"):
        model.set_features({"image": torch.zeros(12, 5), "text": torch.zeros(12, 6)})
    bad = torch.zeros(12, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.set_features({"image": bad, "text": torch.zeros(12, 6)})


def test_precomputed_item_graph_is_used(tiny_data: InteractionData) -> None:
    import scipy.sparse as sp

    model = _mgcn(tiny_data)
    ident = sp.identity(12, format="csr", dtype=np.float32)
    model.set_features(_features(tiny_data), {"image": ident})
    np.testing.assert_allclose(model.item_graphs["image"].to_scipy().toarray(), np.eye(12))
    with pytest.raises(ValueError, match="item graph"):
        model.set_features(_features(tiny_data), {"image": sp.identity(5, format="csr")})


def test_recommend_excludes_items(tiny_data: InteractionData) -> None:
    model = _mgcn(tiny_data)
    exclude = torch.zeros(2, 12, dtype=torch.bool)
    exclude[:, :6] = True
    top = model.recommend(torch.tensor([0, 1]), 5, exclude)
    assert top.shape == (2, 5) and bool((top >= 6).all())
