"""Tests of the MIG-GT backbone (:class:`lightning_tru.nn.MIGGT`)."""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lightning_tru.cli import train_cli
from lightning_tru.datamodules import SyntheticDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.nn import MIGGT
from lightning_tru.nn.graph import SampledDot, SampledMix

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONFIGS = ROOT / "configs" / "train"

# 5 users x 4 items; item 3 has no interaction, user 4 one
EDGES = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 4], [0, 1, 1, 2, 0, 2, 1, 2]])
DIMS = {"image": 6, "text": 3}


def _features(num_items: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(num_items, d, generator=g) for m, d in DIMS.items()}


def _tiny(**kwargs: object) -> MIGGT:
    torch.manual_seed(0)
    kwargs.setdefault("num_layers", {"id": 3, "image": 1, "text": 2})
    kwargs.setdefault("num_samples", 3)
    kwargs.setdefault("mlp_hidden_dims", (8,))
    model = MIGGT(5, 4, DIMS, embedding_dim=4, **kwargs)  # type: ignore[arg-type]
    model.set_graph(EDGES)
    model.set_features(_features())
    return model


def _dense_adj(edges: torch.Tensor, nu: int, ni: int) -> torch.Tensor:
    a = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    a[edges[0], nu + edges[1]] = 1.0
    a[nu + edges[1], edges[0]] = 1.0
    a += torch.eye(nu + ni, dtype=torch.float64)
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def _batch(model: MIGGT, n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randint(model.num_users, (n,), generator=g),
        torch.randint(model.num_items, (n,), generator=g),
        torch.randint(model.num_items, (n,), generator=g),
    )


# ------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["synthetic", "tiktok", "baby"])
def test_config_fast_dev_run(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if name != "synthetic" and not (DATA / name).is_dir():
        pytest.skip(f"{DATA / name} is absent")
    monkeypatch.chdir(ROOT)  # the configs use the relative root ../shared/data/<name>
    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = [
        "fit",
        "--config",
        str(CONFIGS / f"miggt_{name}.yaml"),
        "--trainer.fast_dev_run",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--test_after_fit",
        "false",
    ]
    cli = train_cli(args)
    backbone = cli.model.backbone
    assert isinstance(backbone, MIGGT)
    assert backbone.adj is not None
    assert torch.isfinite(cli.trainer.callback_metrics["train/unsmooth"])


# --------------------------------------------------------------------- propagation


@pytest.mark.parametrize(("alpha", "beta", "k"), [(0.1, 0.9, 3), (0.3, 0.5, 2), (0.1, 0.9, 0)])
def test_diffuse_matches_dense_reference(alpha: float, beta: float, k: int) -> None:
    model = _tiny(alpha=alpha, beta=beta).eval()
    a = _dense_adj(EDGES, 5, 4)
    h0 = torch.randn(9, 4, dtype=torch.float64)
    h = h0
    for _ in range(k):
        h = beta * a @ h + alpha * h0
    gamma = beta**k + alpha * sum(beta**i for i in range(k))
    expected = h / gamma
    torch.testing.assert_close(model.diffuse(h0.float(), k).double(), expected, atol=1e-5, rtol=1e-5)


def test_id_branch_matches_dense_reference() -> None:
    model = _tiny().eval()
    a = _dense_adj(EDGES, 5, 4)
    assert model.user_embedding is not None
    h0 = torch.cat([model.user_embedding.weight.detach().double(), torch.zeros(4, 4, dtype=torch.float64)])
    h = h0
    for _ in range(3):
        h = 0.9 * a @ h + 0.1 * h0
    prop = model.propagate()
    user, item = prop.branches["id"]
    torch.testing.assert_close(torch.cat([user, item]).detach().double(), h / model.gamma(3), atol=1e-5, rtol=1e-5)
    # modality branches: users start from zeros and get their share by propagation only
    image_user, _ = prop.branches["image"]
    assert image_user.abs().sum() > 0


def test_edge_dropout_off_in_eval_on_in_train() -> None:
    torch.manual_seed(0)
    nu, ni = 60, 40
    edges = torch.stack([torch.randint(nu, (600,)), torch.randint(ni, (600,))])
    p = 0.3
    model = MIGGT(nu, ni, None, embedding_dim=4, alpha=0.0, beta=1.0, edge_dropout=p, num_samples=0)
    model.set_graph(edges)
    dense = _dense_adj(edges, nu, ni).float()
    x = torch.eye(nu + ni)
    model.eval()
    torch.testing.assert_close(model.diffuse(x, 1), dense)  # y = A_hat @ I
    model.train()
    x.requires_grad_(True)
    dropped = model.diffuse(x, 1)  # one sampled A_tilde
    nz = dense != 0
    kept = (dropped != 0) & nz
    share = kept.sum().item() / nz.sum().item()
    sd = (p * (1 - p) / nz.sum().item()) ** 0.5
    assert abs(share - (1 - p)) < 4 * sd
    assert not ((dropped != 0) & ~nz).any()
    torch.testing.assert_close(dropped[kept], dense[kept] / (1 - p))
    assert not torch.equal(dropped.detach(), dropped.detach().T)  # directed entries dropped independently
    # backward is A_tilde^T g
    g = torch.randn(nu + ni, nu + ni)
    (dropped * g).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, dropped.detach().T @ g, atol=1e-5, rtol=1e-5)
    # seedable through torch's global RNG
    torch.manual_seed(5)
    first = model.diffuse(torch.eye(nu + ni), 1)
    torch.manual_seed(5)
    torch.testing.assert_close(model.diffuse(torch.eye(nu + ni), 1), first)


# --------------------------------------------------------------------- transformer


def test_transformer_sampling_shapes_and_determinism() -> None:
    model = _tiny(num_samples=5, seed=3).eval()
    s1 = model.sample_items(9)
    assert s1.shape == (9, 5) and s1.dtype == torch.long
    assert int(s1.min()) >= 0 and int(s1.max()) < 4
    torch.testing.assert_close(model.sample_items(9), s1)  # eval: seeded from `seed` on each call
    a, b = model.propagate(), model.propagate()
    assert a.extras["samples"].shape == (9, 5)
    torch.testing.assert_close(a.user, b.user)
    torch.testing.assert_close(a.item, b.item)
    other = _tiny(num_samples=5, seed=4).eval()
    big = (model.sample_items(200), other.sample_items(200))
    assert not torch.equal(*big)
    model.train()  # training: torch's global RNG
    torch.manual_seed(7)
    t1 = model.sample_items(200)
    torch.manual_seed(7)
    torch.testing.assert_close(model.sample_items(200), t1)
    assert not torch.equal(model.sample_items(200), t1)


def test_global_attention_matches_explicit_memory() -> None:
    model = _tiny(num_samples=4).eval()
    h = torch.randn(9, 4)
    samples = model.sample_items(9)
    memory = torch.cat([h.unsqueeze(1), h[5:][samples]], dim=1)  # (N, 1+S, d)
    expected = model.attend(h.unsqueeze(1), memory).squeeze(1)
    torch.testing.assert_close(model.global_attention(h, samples), expected)
    # 0.1 attention + 0.9 input by default; the mix is configurable
    assert (model.attention_weight, model.residual_weight) == (0.1, 0.9)
    mixed = _tiny(num_samples=4, attention_weight=0.5, residual_weight=0.5).eval()
    assert not torch.allclose(mixed.propagate().item, model.propagate().item)


def test_sampled_mix_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    samples = torch.randint(7, (11, 4))
    samples[0] = 2  # repeated samples within a row
    ref = (w.unsqueeze(-1) * x[samples]).sum(1)
    torch.testing.assert_close(SampledMix.apply(x, w, samples), ref)
    assert torch.autograd.gradcheck(lambda a, b: SampledMix.apply(a, b, samples), (x, w))


def test_unsmooth_loss_position_zero_is_the_final_item() -> None:
    model = _tiny(num_samples=3).eval()
    prop = model.propagate()
    users, pos, neg = _batch(model)
    items = prop.extras["summed"][5:]
    memory = torch.cat([items[pos].unsqueeze(1), items[prop.extras["samples"][5 + pos]]], dim=1)
    torch.testing.assert_close(model.attend(memory, memory)[:, 0], prop.item[pos])
    losses = model.auxiliary_losses(prop, users, pos, neg)
    assert set(losses) == {"l2", "unsmooth"}
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())


def test_sampled_dot_gradients() -> None:
    torch.manual_seed(0)
    q = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    samples = torch.randint(7, (11, 4))
    samples[0] = 2  # repeated samples within a row
    torch.testing.assert_close(SampledDot.apply(q, x, samples), (q.unsqueeze(1) * x[samples]).sum(-1))
    assert torch.autograd.gradcheck(lambda a, b: SampledDot.apply(a, b, samples), (q, x))


def test_unsmooth_logits_equal_the_attended_sequence() -> None:
    """TUR's logits without the (B, 1+S, d) sequence equal e_u . attend(m, m)_j, values and gradients."""
    model = _tiny(num_samples=3).eval()
    prop = model.propagate()
    users, pos, _ = _batch(model)
    items = prop.extras["summed"][5:]
    seq = torch.cat([pos.unsqueeze(1), prop.extras["samples"][5 + pos]], dim=1)
    memory = items[seq]
    ref = (prop.user[users].unsqueeze(1) * model.attend(memory, memory)).sum(-1)
    got = model.unsmooth_logits(prop.user[users], items, seq)
    torch.testing.assert_close(got, ref)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ref = torch.autograd.grad(ref.pow(2).sum(), params, retain_graph=True, allow_unused=True)
    g_got = torch.autograd.grad(got.pow(2).sum(), params, allow_unused=True)
    for a, b in zip(g_got, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_no_samples_is_mig_without_transformer() -> None:
    model = _tiny(num_samples=0).eval()
    prop = model.propagate()
    assert "transformer" not in prop.branches and "transformer" not in model.branch_parameters()
    torch.testing.assert_close(prop.item, prop.extras["summed"][5:])
    assert set(model.auxiliary_losses(prop, *_batch(model))) == {"l2"}


# ------------------------------------------------------------------ branches / K


@pytest.mark.parametrize("train", [False, True])
def test_branches_sum_to_final_embeddings(train: bool) -> None:
    model = _tiny().train(train)
    prop = model.propagate()
    assert list(prop.branches) == ["id", "image", "text", "transformer"]
    torch.testing.assert_close(sum(u for u, _ in prop.branches.values()), prop.user, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sum(i for _, i in prop.branches.values()), prop.item, atol=1e-6, rtol=1e-5)
    users, pos, _ = _batch(model)
    parts = model.branch_scores(users, pos, prop)
    torch.testing.assert_close(sum(parts.values()), model.score(users, pos, prop), atol=1e-5, rtol=1e-5)


def test_zero_depth_turns_a_branch_off() -> None:
    model = _tiny(num_layers={"id": 2, "image": 0, "text": 1}).eval()
    prop = model.propagate()
    assert list(prop.branches) == ["id", "text", "transformer"]
    assert "image" not in model.branch_parameters()
    assert not any("image" in n for n, _ in model.named_parameters())
    before = prop.item.clone()
    features = _features()
    features["image"] = torch.randn(4, 6) * 10
    model.set_features(features)
    torch.testing.assert_close(model.propagate().item, before)
    no_id = _tiny(num_layers={"id": 0}).eval()
    assert no_id.user_embedding is None and "id" not in no_id.propagate().branches
    assert no_id.num_layers == {"id": 0, "image": 2, "text": 2}  # unlisted -> default_num_layers


def test_bad_depth_config_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown branches \['visual'\].*\['id', 'image', 'text'\]"):
        MIGGT(5, 4, DIMS, num_layers={"id": 2, "visual": 1})
    with pytest.raises(ValueError, match="every branch is off"):
        MIGGT(5, 4, DIMS, num_layers={"id": 0, "image": 0, "text": 0})
    with pytest.raises(ValueError, match=">= 0"):
        MIGGT(5, 4, DIMS, num_layers={"id": -1})
    with pytest.raises(ValueError, match="reserved"):
        MIGGT(5, 4, {"transformer": 3})
    with pytest.raises(ValueError, match="edge_dropout"):
        MIGGT(5, 4, DIMS, edge_dropout=1.0)


def test_gradients_reach_every_active_branch() -> None:
    model = _tiny(use_item_embedding=True).train()
    prop = model.propagate()
    users, pos, neg = _batch(model)
    loss = -torch.nn.functional.logsigmoid(model.score(users, pos, prop) - model.score(users, neg, prop)).mean()
    loss = loss + sum(model.auxiliary_losses(prop, users, pos, neg).values())
    loss.backward()
    params = dict(model.named_parameters())
    groups = model.branch_parameters()
    assert set(groups) == {"id", "image", "text", "transformer"}
    assert sorted(n for names in groups.values() for n in names) == sorted(params)
    for branch, names in groups.items():
        assert names, branch
        for n in names:
            assert params[n].grad is not None and params[n].grad.abs().sum() > 0, n


def test_random_projection_is_fixed_and_not_checkpointed() -> None:
    dims = {"image": 40, "text": 6}
    model = MIGGT(5, 4, dims, embedding_dim=4, random_projection_above=16, seed=1)
    assert model.projected == {"image": 6}  # the narrowest other modality's width, as MIG-GT
    assert model.encoder["image"][0].in_features == 6
    proj = model.proj_image
    assert proj.shape == (40, 6) and not proj.requires_grad
    assert not any(k.startswith(("proj_", "feat_")) for k in model.state_dict())
    again = MIGGT(5, 4, dims, embedding_dim=4, random_projection_above=16, seed=1)
    torch.testing.assert_close(again.proj_image, proj)
    explicit = MIGGT(5, 4, dims, embedding_dim=4, random_projection_above=16, random_projection_dim=3)
    assert explicit.projected == {"image": 3}
    g = torch.Generator().manual_seed(0)
    model.set_graph(EDGES)
    model.set_features({"image": torch.randn(4, 40, generator=g), "text": torch.randn(4, 6, generator=g)})
    assert model.feat_image.shape == (4, 6)
    assert MIGGT(5, 4, dims, random_projection_above=None).projected == {}


def test_state_dict_round_trip_gives_same_embeddings() -> None:
    model = _tiny(random_projection_above=4)
    model.propagate()  # one training pass moves the BatchNorm statistics
    model.eval()
    clone = MIGGT(5, 4, DIMS, embedding_dim=4, num_layers={"id": 3, "image": 1, "text": 2}, num_samples=3,
                  mlp_hidden_dims=(8,), random_projection_above=4)
    clone.load_state_dict(model.state_dict())
    clone.set_graph(EDGES)
    clone.set_features(_features())
    clone.eval()
    torch.testing.assert_close(clone.propagate().user, model.propagate().user)


def test_missing_graph_or_features_errors() -> None:
    model = MIGGT(5, 4, DIMS)
    with pytest.raises(RuntimeError, match="set_graph"):
        model.propagate()
    model.set_graph(EDGES)
    with pytest.raises(RuntimeError, match="set_features"):
        model.propagate()


# ------------------------------------------------------------------------ training


def _module(dm: SyntheticDataModule, **kwargs: object) -> RecommenderModule:
    backbone = partial(MIGGT, num_layers={"id": 4, "text": 2, "image": 1}, **kwargs)
    return RecommenderModule(
        backbone,  # type: ignore[arg-type]
        dm.num_users,
        dm.num_items,
        dm.feature_dims,
        optimizer=partial(torch.optim.Adam, lr=1e-2),
        scheduler=partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.99),
    )


def _trainer(**kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_recommender_module_trains_miggt() -> None:
    L.seed_everything(0)
    dm = SyntheticDataModule(num_users=300, num_items=150, seed=0, batch_size=512)
    module = _module(dm)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    trainer = _trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, dm)
    assert module.backbone.adj is not None  # attached by RecommenderModule.setup
    assert {"train/bpr", "train/l2", "train/unsmooth"} <= set(trainer.callback_metrics)
    for n, p in module.backbone.named_parameters():
        assert not torch.equal(p, before[n]), n


def test_short_training_improves_valid_recall() -> None:
    L.seed_everything(0)
    # uniform popularity: an untrained graph model already ranks popular items well on Zipf data
    dm = SyntheticDataModule(num_users=300, num_items=150, popularity_exponent=0.0, seed=0, batch_size=512)
    module = _module(dm)
    untrained = _trainer().validate(module, dm, verbose=False)[0]["val/recall@20"]
    _trainer(max_epochs=5, limit_val_batches=0).fit(module, dm)
    trained = _trainer().validate(module, dm, verbose=False)[0]["val/recall@20"]
    assert np.isfinite(trained) and trained > untrained + 0.03, (untrained, trained)
