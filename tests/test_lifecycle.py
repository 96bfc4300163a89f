"""The deletion lifecycle: successive requests never resurrect deleted data; lineage checks; purge; serving."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_tru.audit.forgetting import recall_exposure_at_k
from lightning_tru.callbacks import TRU
from lightning_tru.datamodules import RecDataModule, SyntheticDataModule
from lightning_tru.datamodules.datasets import BPRDataset, RankingDataset
from lightning_tru.datamodules.deletions import (
    LINEAGE_KEY,
    DeletionStore,
    LineageError,
    data_fingerprint,
    deletion_mask,
)
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.mmrec import load_mmrec
from lightning_tru.datamodules.purge import write_mmrec
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.ledger import verify
from lightning_tru.lifecycle import AuditSettings, RetrainSettings, answer_request, load_trained_weights, recommend
from lightning_tru.models import RecommenderModule
from lightning_tru.nn import LightGCN

DATA = dict(num_users=240, num_items=120, seed=3, batch_size=1024, eval_batch_size=256)


def _dm(store: Path | None = None, **kw: Any) -> SyntheticDataModule:
    return SyntheticDataModule(**{**DATA, **kw}, deletions=store)


def _model(dm: RecDataModule) -> RecommenderModule:
    seed_everything(0)
    return RecommenderModule(partial(LightGCN, embedding_dim=16, num_layers=2), dm.num_users, dm.num_items,
                             dm.feature_dims, optimizer=partial(torch.optim.Adam, lr=1e-2))


def _quiet(**kw: Any) -> Trainer:
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", num_sanity_val_steps=0, **kw)


def _train(dm: RecDataModule, path: Path, epochs: int = 25) -> Path:
    model = _model(dm)
    trainer = _quiet(max_epochs=epochs, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path)
    return path


def _pairs(m: Any) -> set[tuple[int, int]]:
    m = m.tocoo()
    return set(zip(m.row.tolist(), m.col.tolist()))


def _deleted(raw: Any, store: DeletionStore) -> set[tuple[int, int]]:
    """Every (user, item) row of the raw data that the store's requests delete (train and held-out)."""
    out: set[tuple[int, int]] = set()
    for d in store.entries():
        drop = deletion_mask(raw, d.forget_pairs, d.regime, d.users, d.items)
        out |= set(map(tuple, raw.pairs[drop].tolist()))
    return out


class _Seen:
    """Records every pair that enters a graph, a training/retain batch or an evaluation."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.pairs: set[tuple[int, int]] = set()
        seen = self

        orig_graph = LightGCN.set_graph
        def set_graph(self_: LightGCN, edge_index: torch.Tensor) -> None:  # noqa: E306
            seen.pairs |= set(map(tuple, edge_index.T.tolist()))
            orig_graph(self_, edge_index)

        orig_batch = UnlearningDataModule.make_batch
        def make_batch(self_: UnlearningDataModule, epoch: int, index: int) -> Any:  # noqa: E306
            b = orig_batch(self_, epoch, index)
            seen.pairs |= set(zip(b.retain_users.tolist(), b.retain_items.tolist()))
            return b

        orig_bpr = BPRDataset.__getitems__
        def bpr(self_: BPRDataset, idx: list[int]) -> Any:  # noqa: E306
            u, p, n = orig_bpr(self_, idx)
            seen.pairs |= set(zip(u.tolist(), p.tolist()))
            return u, p, n

        orig_rank = RankingDataset.__getitems__
        def rank(self_: RankingDataset, idx: list[int]) -> Any:  # noqa: E306
            u, e, t = orig_rank(self_, idx)
            for m in (e, t):
                r, c = m.nonzero(as_tuple=True)
                seen.pairs |= set(zip(u[r].tolist(), c.tolist()))
            return u, e, t

        mp.setattr(LightGCN, "set_graph", set_graph)
        mp.setattr(UnlearningDataModule, "make_batch", make_batch)
        mp.setattr(BPRDataset, "__getitems__", bpr)
        mp.setattr(RankingDataset, "__getitems__", rank)


def test_three_successive_requests_never_resurrect_deleted_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_dir = tmp_path / "deletions"
    ckpt = _train(_dm(store_dir), tmp_path / "trained.ckpt")
    raw = _dm().data
    requests = [ForgetRequest("user", 0.05, seed=1), ForgetRequest("item", 0.05, seed=2),
                ForgetRequest("interaction", 0.05, seed=3)]
    reports = []
    for n, request in enumerate(requests):
        seen = _Seen(monkeypatch)
        dm = _dm(store_dir)  # a fresh load, as a new process would do
        earlier = _deleted(raw, DeletionStore(store_dir))
        assert not earlier & _pairs(dm.data.csr("train", "valid", "test"))
        last = n == len(requests) - 1
        report = answer_request(
            _model(dm), dm, request, ckpt,
            trainer=_quiet(max_epochs=60, callbacks=[TRU(lr=0.05, eval_every=2, max_utility_loss=None)]),  # lifecycle, not TRU
            compare_retrain=last, output_root=tmp_path / "out", ledger=tmp_path / "ledger.jsonl", seed=0,
            verbose=False,
        )
        monkeypatch.undo()
        assert report["status"]["target_reached"], report["status"]
        assert report["request"]["regime"] == request.regime
        assert seen.pairs and not earlier & seen.pairs  # no earlier deletion re-entered a graph, batch or evaluation
        ckpt = Path(report["run_dir"]) / "model.ckpt"
        reports.append(report)
    store = DeletionStore(store_dir)
    fps = [r["request"]["fingerprint"] for r in reports]
    assert store.fingerprints() == fps
    assert torch.load(ckpt, weights_only=True)[LINEAGE_KEY]["deletions"] == fps
    ledger = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [e["status"]["target_reached"] for e in ledger] == [True] * 3 and ledger[-1]["chain"] == fps
    assert verify(tmp_path / "ledger.jsonl").ok

    # the last request's Retrain trained on the data minus the union of the three: one Retrain on the union
    final, gold = reports[-1]["metrics"]["TRU"], reports[-1]["metrics"]["Retrain"]
    assert final["test/ndcg@20"] >= 0.85 * gold["test/ndcg@20"], (final, gold)
    # and the first request's pairs stay forgotten in the final model (not resurrected by the later runs)
    dm = _dm(store_dir)
    model = _model(dm)
    load_trained_weights(model, ckpt, dm)
    model.attach(dm)
    model.eval()
    first = UnlearningDataModule(_dm(), requests[0])  # resolved on the raw data, as the first run did
    assert first.forget.fingerprint == fps[0]
    r1 = recall_exposure_at_k(model, dm.data.csr("train"), first.forget_csr(), 20)["forget_recall@20"]
    before = recall_exposure_at_k(_loaded(tmp_path / "trained.ckpt"), first.retained_train_csr(), first.forget_csr(),
                            20)["forget_recall@20"]
    answered = reports[0]["metrics"]["TRU"]["forget_recall@20"]  # what the first answer left
    assert r1 <= answered + 0.05 and r1 < 0.7 * before, (r1, answered, before)  # not resurrected by later runs
    # the probe would see them: a load without the store brings every deleted pair back
    seen = _Seen(monkeypatch)
    plain = _dm()
    _model(plain).attach(plain)
    assert _deleted(raw, store) <= seen.pairs | _pairs(plain.data.csr("valid", "test"))


def _loaded(path: Path) -> RecommenderModule:
    dm = _dm()
    model = _model(dm)
    load_trained_weights(model, path, dm)
    model.attach(dm)
    return model.eval()


# ------------------------------------------------------------------------- one answered request, shared
@pytest.fixture(scope="module")
def answered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained checkpoint, a store holding one answered user-wise request, and its unlearned checkpoint."""
    tmp = tmp_path_factory.mktemp("answered")
    trained = _train(_dm(tmp / "deletions"), tmp / "trained.ckpt", epochs=10)
    dm = _dm(tmp / "deletions")
    report = answer_request(_model(dm), dm, ForgetRequest("user", 0.05, seed=1), trained,
                            trainer=_quiet(max_epochs=40, callbacks=[TRU(lr=0.05, eval_every=2)]),
                            output_root=tmp / "out", ledger=tmp / "ledger.jsonl", write_retained=tmp / "purged",
                            verbose=False)
    assert report["status"]["target_reached"]
    return {"tmp": tmp, "trained": trained, "store": tmp / "deletions", "report": report,
            "unlearned": Path(report["run_dir"]) / "model.ckpt"}


def test_checkpoints_are_refused_against_data_they_do_not_belong_to(answered: dict[str, Any]) -> None:
    store, unlearned, trained = answered["store"], answered["unlearned"], answered["trained"]
    with pytest.raises(LineageError, match="still holds their pairs.*--deletions"):
        load_trained_weights(_model(_dm()), unlearned, _dm())  # the raw data: the forgotten pairs are back
    with pytest.raises(LineageError, match="predates the deletion requests"):
        load_trained_weights(_model(_dm()), trained, _dm(store))  # the original model still holds them
    other = _dm(seed=4)  # same shape, other interactions
    with pytest.raises(LineageError, match="other data of the same shape"):
        load_trained_weights(_model(other), trained, other)
    load_trained_weights(_model(_dm()), unlearned, _dm(store))  # the data it belongs to
    # Lightning's own loading (train.py validate/test/predict --ckpt_path) runs the same check
    with pytest.raises(LineageError, match="predates"):
        _quiet().validate(_model(_dm()), datamodule=_dm(store), ckpt_path=str(trained), verbose=False)
    assert _quiet().validate(_model(_dm()), datamodule=_dm(), ckpt_path=str(trained), verbose=False)
    # a model trained from scratch with the store (train.py fit --deletions) answers its requests exactly
    fresh = _train(_dm(store), answered["tmp"] / "fresh.ckpt", epochs=1)
    lineage = torch.load(fresh, weights_only=True)[LINEAGE_KEY]
    assert lineage["deletions"] == DeletionStore(store).fingerprints()
    assert lineage["train_fingerprint"] == data_fingerprint(_dm(store).data)
    load_trained_weights(_model(_dm()), fresh, _dm(store))


def test_store_records_once_detects_tampering_and_other_data(answered: dict[str, Any], tmp_path: Path) -> None:
    store = DeletionStore(answered["store"])
    (entry,) = store.entries()
    assert entry.fingerprint == answered["report"]["request"]["fingerprint"] and entry.regime == "user"
    assert entry.resolved_on == data_fingerprint(_dm().data)
    raw = _dm().data
    kept, chain = store.apply(raw)
    assert chain == [entry.fingerprint] and not (set(np.unique(kept.pairs[:, 0])) & set(entry.users.tolist()))
    assert len(kept.pairs) == len(raw.pairs) - int(np.isin(raw.pairs[:, 0], entry.users).sum())
    with pytest.raises(LineageError, match="answered on other training data"):
        store.apply(_dm(seed=4).data)  # same shape, other data
    with pytest.raises(LineageError, match="another data set"):
        store.apply(SyntheticDataModule(num_users=40, num_items=30, seed=0).data)
    # tampering: a record whose pairs no longer match its fingerprint
    copy = tmp_path / "store"
    copy.mkdir()
    src = next(answered["store"].glob("*.npz"))
    with np.load(src) as z:
        fields = dict(z)
    fields["forget_pairs"] = fields["forget_pairs"][1:]
    np.savez(copy / src.name, **fields)
    with pytest.raises(LineageError, match="edited or damaged"):
        DeletionStore(copy).entries()
    with pytest.raises(LineageError, match="is a file"):
        DeletionStore(src)


def test_purged_data_loads_back_equal_and_needs_no_store(answered: dict[str, Any]) -> None:
    purged = answered["tmp"] / "purged"
    retained = _dm(answered["store"]).data
    back = load_mmrec(purged)
    order = lambda d: np.lexsort((d.pairs[:, 1], d.pairs[:, 0]))  # noqa: E731
    np.testing.assert_array_equal(back.pairs[order(back)], retained.pairs[order(retained)])
    np.testing.assert_array_equal(back.split[order(back)], retained.split[order(retained)])
    assert back.features.keys() == retained.features.keys()
    for m in back.features:
        np.testing.assert_array_equal(back.features[m], retained.features[m])
    # the unlearned checkpoint loads against the purged data without a store (ids padded to the model's sizes)
    from lightning_tru.datamodules import MMRecDataModule

    dm = MMRecDataModule(purged, min_users=DATA["num_users"], min_items=DATA["num_items"])
    load_trained_weights(_model(dm), answered["unlearned"], dm)
    with pytest.raises(FileExistsError, match="already exists"):
        write_mmrec(retained, purged, "x")


def test_serving_uses_the_checkpoints_own_graph(answered: dict[str, Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store, unlearned = answered["store"], answered["unlearned"]
    dm = _dm(store)
    deleted = _deleted(_dm().data, DeletionStore(store))
    seen = _Seen(monkeypatch)
    out = recommend(_model(dm), dm, unlearned, tmp_path / "recs.tsv", k=5, users=[0, 3, 7], accelerator="cpu")
    monkeypatch.undo()
    assert not deleted & seen.pairs  # the graph it propagated over holds no forgotten edge
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["userID", "rank", "itemID", "score"]
    got = {(int(u), int(r)): int(i) for u, r, i, _ in rows[1:]}
    # reference: the same weights on the retained graph, train items masked, plain top-k
    model = _model(dm)
    load_trained_weights(model, unlearned, dm)
    model.attach(dm)
    model.eval()
    with torch.no_grad():
        u, i = model.embeddings()
    train = dm.data.csr("train").toarray().astype(bool)
    for user in (0, 3, 7):
        s = (u[user] @ i.T).masked_fill(torch.from_numpy(train[user]), float("-inf"))
        want = torch.topk(s, 5).indices.tolist()
        assert [got[(user, r)] for r in range(1, 6)] == want
        assert not train[user, want].any()
    assert not list(tmp_path.glob(".*tmp"))
    # an unlearned checkpoint is never served on the original graph
    with pytest.raises(LineageError, match="still holds their pairs"):
        recommend(_model(_dm()), _dm(), unlearned, tmp_path / "bad.tsv", k=5, accelerator="cpu")
    assert not (tmp_path / "bad.tsv").exists()
    with pytest.raises(ValueError, match="unknown user ids"):
        recommend(_model(dm), dm, unlearned, tmp_path / "bad.tsv", users=[10_000], accelerator="cpu")


def test_a_run_that_does_nothing_is_not_a_deletion(tmp_path: Path) -> None:
    store = tmp_path / "deletions"
    trained = _train(_dm(store), tmp_path / "t.ckpt", epochs=3)
    dm = _dm(store)
    report = answer_request(_model(dm), dm, ForgetRequest("user", 0.05, seed=1), trained,
                            trainer=_quiet(max_epochs=0, callbacks=[TRU()]), output_root=tmp_path / "out",
                            ledger=tmp_path / "ledger.jsonl", verbose=False)
    assert report["status"]["target_reached"] is False and "did not change" in report["status"]["stopping_reason"]
    assert not store.exists()  # the request is not recorded as deleted
    (entry,) = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert entry["status"]["target_reached"] is False and entry["status"]["steps"] == 0
    # its model.ckpt is kept for inspection, but nothing loads it as a deletion state
    kept = Path(report["run_dir"]) / "model.ckpt"
    with pytest.raises(LineageError, match="did NOT answer"):
        load_trained_weights(_model(dm), kept, dm)
    with pytest.raises(LineageError, match="did NOT answer"):
        _quiet().validate(_model(dm), datamodule=dm, ckpt_path=str(kept), verbose=False)


def test_retrain_runs_on_the_device_type_of_the_unlearning_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retrain (and the second Retrain of the noise floor) trains where the method ran: the CPU trainer's device type,
    not Lightning's own pick (a GPU when one is there: the speed-up would compare a CPU method with a GPU Retrain)."""
    import lightning_tru.lifecycle as lifecycle

    seen: list[Any] = []
    real = lifecycle.retrain

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(kw.get("accelerator"))
        return real(*args, **kw)

    monkeypatch.setattr(lifecycle, "retrain", spy)
    ckpt = _train(_dm(tmp_path / "deletions"), tmp_path / "t.ckpt", epochs=2)
    dm = _dm(tmp_path / "deletions")
    answer_request(_model(dm), dm, ForgetRequest("user", 0.05, seed=0), ckpt,
                   trainer=_quiet(max_epochs=2, limit_val_batches=0, callbacks=[TRU()]), compare_retrain=True,
                   retrain_settings=RetrainSettings(max_epochs=2, patience=1),
                   audit=AuditSettings(enabled=True, retrain_floor=True), output_root=tmp_path / "runs",
                   ledger=tmp_path / "ledger.jsonl", verbose=False)
    assert seen == ["cpu", "cpu"], seen


# ------------------------------------------------------------------------- concurrent runs, named ids, outputs
def test_two_requests_answered_at_once_record_only_the_first(tmp_path: Path) -> None:
    store = tmp_path / "deletions"
    trained = _train(_dm(store), tmp_path / "t.ckpt", epochs=10)
    dm_a, dm_b = _dm(store), _dm(store)  # both jobs load the data before either records
    run = lambda dm, seed: answer_request(  # noqa: E731
        _model(dm), dm, ForgetRequest("user", 0.05, seed=seed), trained,
        trainer=_quiet(max_epochs=40, callbacks=[TRU(lr=0.05, eval_every=2)]), output_root=tmp_path / "out",
        ledger=tmp_path / "ledger.jsonl", verbose=False, audit=AuditSettings(enabled=False))
    first, second = run(dm_a, 1), run(dm_b, 2)
    assert first["status"]["target_reached"]
    assert second["status"]["target_reached"] is False
    assert "changed while this request was answered" in second["status"]["stopping_reason"]
    assert DeletionStore(store).fingerprints() == [first["request"]["fingerprint"]]
    entries = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [e["status"]["target_reached"] for e in entries] == [True, False]
    _dm(store)  # the store still loads: no stale record broke it
    with pytest.raises(LineageError, match="did NOT answer"):
        load_trained_weights(_model(_dm()), Path(second["run_dir"]) / "model.ckpt", _dm(store))


def test_named_users_lose_their_held_out_rows_even_without_train_rows(tmp_path: Path) -> None:
    raw = _dm().data
    train = raw.split_pairs(0)
    held = raw.pairs[raw.split != 0]
    u0 = int(held[0, 0])  # a user with held-out rows
    u1 = int(next(u for u in np.unique(train[:, 0]) if u != u0))
    (tmp_path / "r1.json").write_text(json.dumps({"pairs": train[train[:, 0] == u0].tolist()}))
    store = DeletionStore(tmp_path / "deletions")
    fs1 = ForgetRequest(file=tmp_path / "r1.json").resolve(raw)  # interaction-wise: all of u0's train rows
    store.record(fs1, data_fingerprint(raw))
    after1, _ = store.apply(raw)
    assert (after1.pairs[:, 0] == u0).any()  # interaction-wise keeps the held-out rows
    (tmp_path / "only.json").write_text(json.dumps({"users": [u0]}))
    with pytest.raises(ValueError, match=rf"users \[{u0}\] have none .*held-out rows"):
        ForgetRequest(file=tmp_path / "only.json").resolve(after1)
    (tmp_path / "r2.json").write_text(json.dumps({"users": [u0, u1]}))
    fs2 = ForgetRequest(file=tmp_path / "r2.json").resolve(after1)
    assert fs2.users.tolist() == [u1] and set(fs2.purged_users.tolist()) == {u0, u1}
    store.record(fs2, data_fingerprint(after1))
    (rec2,) = [d for d in store.entries() if d.fingerprint == fs2.fingerprint]
    assert set(rec2.users.tolist()) == {u0, u1}
    after2, _ = store.apply(raw)
    assert not np.isin(after2.pairs[:, 0], [u0, u1]).any()  # every row of both users is gone
    retained = RecDataModule(after1).without(fs2)
    assert not np.isin(retained.data.pairs[:, 0], [u0, u1]).any()


def test_write_retained_may_not_overlap_the_runs_own_outputs(tmp_path: Path) -> None:
    store = tmp_path / "deletions"
    trained = _train(_dm(store), tmp_path / "t.ckpt", epochs=2)
    from lightning_tru.lifecycle import OutputPathError

    ledger = tmp_path / "w" / "ledger.jsonl"
    for bad in (ledger, tmp_path / "out", store, store / "purged", tmp_path / "w"):
        dm = _dm(store)
        with pytest.raises(OutputPathError, match="overlap"):
            answer_request(_model(dm), dm, ForgetRequest("user", 0.05, seed=1), trained,
                           trainer=_quiet(max_epochs=2, callbacks=[TRU()]), output_root=tmp_path / "out",
                           ledger=ledger, write_retained=bad, verbose=False)
        assert not (tmp_path / "w").exists() and not store.exists() and not (tmp_path / "out").exists()


def test_serving_never_replaces_an_input(answered: dict[str, Any], tmp_path: Path) -> None:
    from lightning_tru.lifecycle import OutputPathError

    store, unlearned = answered["store"], answered["unlearned"]
    dm = _dm(store)
    ledger = answered["tmp"] / "ledger.jsonl"
    before = ledger.read_bytes()
    with pytest.raises(OutputPathError, match="not a recommendations file"):
        recommend(_model(dm), dm, unlearned, ledger, k=5, users=[0], accelerator="cpu")
    assert ledger.read_bytes() == before and verify(ledger).ok
    with pytest.raises(OutputPathError, match="inside the deletion store"):
        recommend(_model(dm), dm, unlearned, store / "recs.tsv", k=5, users=[0], accelerator="cpu")
    with pytest.raises(OutputPathError, match="an input"):
        recommend(_model(dm), dm, unlearned, unlearned, k=5, users=[0], accelerator="cpu")
    out = recommend(_model(dm), dm, unlearned, tmp_path / "recs.tsv", k=5, users=[0], accelerator="cpu")
    recommend(_model(dm), dm, unlearned, out, k=3, users=[0, 1], accelerator="cpu")  # an earlier output: replaced
    assert len(out.read_text().splitlines()) == 1 + 2 * 3


def test_the_default_store_is_never_skipped_silently(answered: dict[str, Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_tru.datamodules.deletions import check_store_applied
    from lightning_tru.cli import DEFAULT_DELETIONS, _check_default_store

    with pytest.raises(LineageError, match="not applied: their deleted interactions would come back"):
        check_store_applied(_dm().data, answered["store"], applied=False)
    check_store_applied(_dm().data, answered["store"], applied=True)
    check_store_applied(_dm(seed=4).data, answered["store"], applied=False)  # other data: not its store
    check_store_applied(_dm(answered["store"]).data, answered["store"], applied=False)  # purged: nothing comes back
    monkeypatch.chdir(tmp_path)  # train.py / recommend.py without --deletions, the store at the default path
    import shutil

    shutil.copytree(answered["store"], tmp_path / DEFAULT_DELETIONS)
    with pytest.raises(LineageError, match=f"--deletions {DEFAULT_DELETIONS}"):
        _check_default_store(_dm())
    _check_default_store(_dm(tmp_path / DEFAULT_DELETIONS))


def test_ledger_verify_checks_the_store_against_the_ledger(answered: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    import shutil

    from lightning_tru.ledger import main as ledger_main

    ledger, store = answered["tmp"] / "ledger.jsonl", answered["store"]
    assert ledger_main(["verify", str(ledger), "--deletions", str(store)]) == 0
    assert "each recorded as answered" in capsys.readouterr().out
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    rec = next(copy.glob("*.npz"))
    with np.load(rec) as z:
        fields = dict(z)
    fields["users"] = fields["users"][1:]  # a user taken out of the record: their held-out rows would come back
    np.savez(rec, **fields)
    assert ledger_main(["verify", str(ledger), "--deletions", str(copy)]) == 1
    assert "was edited" in capsys.readouterr().out
    rec.unlink()  # the record removed: the request's data would come back on every load
    assert ledger_main(["verify", str(ledger), "--deletions", str(copy)]) == 1
    assert "has no record" in capsys.readouterr().out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert ledger_main(["verify", str(empty), "--deletions", str(store)]) == 1  # a record no entry answers
    assert "answered by no ledger entry" in capsys.readouterr().out


def test_a_request_too_small_to_verify_is_not_answered(tmp_path: Path) -> None:
    """One pair: the pair-MIA AUC is 0 or 1, its band covers everything; nothing can be verified, nothing recorded."""
    store = tmp_path / "deletions"
    trained = _train(_dm(store), tmp_path / "t.ckpt", epochs=5)
    dm = _dm(store)
    (tmp_path / "one.json").write_text(json.dumps({"pairs": [dm.train_pairs()[0].tolist()]}))
    report = answer_request(_model(dm), dm, ForgetRequest(file=tmp_path / "one.json"), trained,
                            trainer=_quiet(max_epochs=20, callbacks=[TRU()]), output_root=tmp_path / "out",
                            ledger=tmp_path / "ledger.jsonl", verbose=False)
    assert report["status"]["target_reached"] is False
    assert "too few forget pairs to verify" in report["status"]["stopping_reason"]
    assert not store.exists()


def test_buffers_are_no_unlearning_and_go_back_with_a_rollback() -> None:
    from lightning_tru.callbacks.base import UnlearningCallback
    from lightning_tru.lifecycle import _changed

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    weights = {k: v.detach().clone() for k, v in net.named_parameters()}
    snap = UnlearningCallback._snapshot(net)
    net.train()
    net(torch.randn(8, 3))  # a forward pass in train mode moves the running statistics only
    assert not _changed(weights, net)
    assert not torch.equal(snap["1.running_mean"], net[1].running_mean)
    UnlearningCallback._restore(net, snap)
    assert torch.equal(snap["1.running_mean"], net[1].running_mean)
    with torch.no_grad():
        net[0].weight[0, 0] += 1.0
    assert _changed(weights, net)
