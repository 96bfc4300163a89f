"""run_audits: the JSON-ready schema, the verdicts on planted models, the opt-in user-level MIA."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from _audit_setup import planted
from lightning_tru.audit import run_audits


def test_run_audits_schema_and_verdicts() -> None:
    p = planted()
    before, model = copy.deepcopy(p.trained), copy.deepcopy(p.trained)  # model: graph surgery only
    retrain, retrain2 = copy.deepcopy(p.retrain), copy.deepcopy(p.retrain2)
    out = run_audits(model, p.udm, retrain=retrain, retrain_seed2=retrain2, before=before, name="Surgery",
                     user_level=True, initial=p.initial, shadow_max_epochs=15, shadow_patience=5)
    json.dumps(out)  # JSON-ready
    assert list(out) == ["before", "Surgery", "Retrain"]
    for col in out.values():
        assert {"membership", "global_exposure", "fairness", "user_mia", "distance"} <= set(col)
        assert {"auc", "auc_rank", "flag", "delta", "reference", "flag_rank"} <= set(col["membership"])
        assert {"ndcg@20_active", "ndcg@20_inactive", "ndcg@20_gap"} == set(col["fairness"])
    # the deployed model still remembers: residual memory against Retrain, at pair and user level
    assert out["before"]["membership"]["flag"] == "residual_memory"
    assert out["before"]["membership"]["reference"] == out["Retrain"]["membership"]["auc"]
    # Retrain is the reference, never judged against 0.5 (item-wise it sits far below)
    rm = out["Retrain"]["membership"]
    assert rm["reference"] == rm["auc"] and rm["flag"] == rm["flag_rank"] == "reference" and rm["delta_rank"] == 0.0
    assert out["before"]["global_exposure"]["reduction"] == 0.0
    ge = out["Retrain"]["global_exposure"]
    assert ge["reduction"] == pytest.approx(1 - ge["exposure@20"] / out["before"]["global_exposure"]["exposure@20"])
    # distance: Retrain sits on its own floor; the floor's ratio is 1 for a second Retrain only
    assert out["Retrain"]["distance"]["jaccard@20"] == pytest.approx(1.0)
    assert 0 < out["Surgery"]["distance"]["floor_jaccard@20"] < 1
    um = out["before"]["user_mia"]
    print({c: (r["membership"]["auc"], r["user_mia"]["auc"]) for c, r in out.items()}, um["shadow_auc"])
    assert um["shadow_auc"] > 0.7
    # Retrain's deleted users look less like members than the deployed model's: residual memory before
    assert out["Retrain"]["user_mia"]["auc"] < um["auc"] - 0.05 and um["flag"] == "residual_memory"
    assert out["Retrain"]["user_mia"]["flag"] == "reference"


def test_run_audits_validates_its_arguments() -> None:
    p = planted()
    with pytest.raises(ValueError, match="reserved"):
        run_audits(p.retrain, p.udm, name="Retrain")
    with pytest.raises(ValueError, match="initial="):
        run_audits(p.retrain, p.udm, user_level=True)
    out = run_audits(copy.deepcopy(p.retrain), p.udm, name="X", max_users=50)
    assert list(out) == ["X"] and "distance" not in out["X"] and out["X"]["membership"]["reference"] == 0.5


def test_a_shadow_trained_once_serves_every_method_of_the_request() -> None:
    """train_shadow + run_audits(shadow=...) gives exactly the user-level MIA that user_level=True trains
    itself (same seed, same split); a shadow of another seed (or request) is refused."""
    from lightning_tru.audit import train_shadow

    p = planted()
    own = run_audits(copy.deepcopy(p.trained), p.udm, retrain=copy.deepcopy(p.retrain), name="M", user_level=True,
                     initial=p.initial, shadow_max_epochs=15, shadow_patience=5, seed=3)
    shadow = train_shadow(p.udm, p.initial, seed=3, max_epochs=15, patience=5)
    for _ in range(2):  # reused: the same numbers each time
        given = run_audits(copy.deepcopy(p.trained), p.udm, retrain=copy.deepcopy(p.retrain), name="M",
                           shadow=shadow, seed=3)
        for col in ("M", "Retrain"):
            assert given[col]["user_mia"]["auc"] == pytest.approx(own[col]["user_mia"]["auc"], abs=1e-6)
            assert given[col]["user_mia"]["shadow_auc"] == pytest.approx(own[col]["user_mia"]["shadow_auc"], abs=1e-6)
    assert len(set(shadow.members) & set(shadow.nonmembers)) == 0 and len(set(shadow.reference) & set(shadow.members)) == 0
    with pytest.raises(ValueError, match="seed 3"):
        run_audits(copy.deepcopy(p.trained), p.udm, name="M", shadow=shadow, seed=4)
    # a shadow saved earlier (its weights) is loaded, not trained again: the same attack numbers
    again = train_shadow(p.udm, p.initial, seed=3, weights=shadow.model.state_dict(), max_epochs=0)
    loaded = run_audits(copy.deepcopy(p.trained), p.udm, retrain=copy.deepcopy(p.retrain), name="M", shadow=again, seed=3)
    assert loaded["M"]["user_mia"]["auc"] == pytest.approx(own["M"]["user_mia"]["auc"], abs=1e-6)


def test_an_unchanged_model_reduces_no_exposure_item_wise() -> None:
    """Every column is served under the same exclusion: a model that did not change (an ID-only MF, which no graph
    surgery moves) has exposure reduction 0 on an item-wise request, where its users' forgotten train items are
    no longer masked after the deletion."""
    from functools import partial

    from lightning_tru.datamodules import SyntheticDataModule
    from lightning_tru.datamodules.forget import ForgetRequest
    from lightning_tru.datamodules.unlearning import UnlearningDataModule
    from lightning_tru.models import RecommenderModule
    from lightning_tru.nn.mf import MF

    dm = SyntheticDataModule(num_users=200, num_items=120, seed=2, batch_size=1024, eval_batch_size=200)
    udm = UnlearningDataModule(dm, ForgetRequest("item", 0.1, seed=0), seed=0)
    torch.manual_seed(0)
    model = RecommenderModule(partial(MF, embedding_dim=8), dm.num_users, dm.num_items, dm.feature_dims).eval()
    with torch.no_grad():  # popular items score high: the forgotten items reach the top-K of their own users
        pop = torch.from_numpy(np.asarray(dm.data.csr("train").sum(0)).ravel()).float()
        model.backbone.item_embedding.weight[:, 0] = pop / pop.max() * 5
        model.backbone.user_embedding.weight[:, 0] = 1.0
    out = run_audits(model, udm, before=copy.deepcopy(model), name="same")
    ge_before, ge = out["before"]["global_exposure"]["exposure@20"], out["same"]["global_exposure"]["exposure@20"]
    assert ge_before > 0 and ge == pytest.approx(ge_before) and out["same"]["global_exposure"]["reduction"] == pytest.approx(0.0)
