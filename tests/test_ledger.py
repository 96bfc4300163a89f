"""The deletion ledger: hash chain, tamper detection, torn tails, status schema, path checks, the verify CLI."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_tru.ledger import GENESIS, LedgerError, append_entry, check_ledger_path, main, read_entries, verify

REPO = Path(__file__).resolve().parents[1]


def _entry(i: int, reached: bool = True, steps: int = 7) -> dict:
    return {"fingerprint": f"fp{i}", "method": "TRU", "metrics": {"forget_recall@20": 0.25 + i},
            "status": {"target_reached": reached, "stopping_reason": "reached the target", "steps": steps}}


def _ledger(path: Path, n: int = 3) -> list[dict]:
    return [append_entry(path, _entry(i)) for i in range(n)]


def test_chain_links_each_line_to_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.jsonl"  # parent created
    written = _ledger(path)
    raw = path.read_bytes().split(b"\n")
    assert raw[-1] == b"" and len(raw) == 4
    assert written[0]["prev_hash"] == GENESIS and [e["seq"] for e in written] == [0, 1, 2]
    for i in (1, 2):  # naive reference: SHA-256 of the previous line's bytes
        assert written[i]["prev_hash"] == hashlib.sha256(raw[i - 1]).hexdigest()
    for e, line in zip(written, raw):
        body = {k: v for k, v in json.loads(line).items() if k != "hash"}
        assert e["hash"] == hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert read_entries(path) == written
    res = verify(path)
    assert res.ok and res.entries == 3 and res.bad_line is None and "3 entries" in str(res)


@pytest.mark.parametrize("edit", ["value", "drop", "swap", "hash_recomputed"])
def test_tampering_is_detected_at_the_right_line(tmp_path: Path, edit: str) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path, 4)
    lines = path.read_text().splitlines()
    if edit == "value":  # a middle line's metric edited
        lines[1] = lines[1].replace('"forget_recall@20":1.25', '"forget_recall@20":0.01')
        bad = 2
    elif edit == "drop":
        del lines[1]
        bad = 2
    elif edit == "swap":
        lines[1], lines[2] = lines[2], lines[1]
        bad = 2
    else:  # the forger recomputes the edited line's own hash: the next line's prev_hash still catches it
        e = json.loads(lines[1])
        e["status"]["target_reached"] = False
        e["hash"] = hashlib.sha256(json.dumps({k: v for k, v in e.items() if k != "hash"}, sort_keys=True,
                                              separators=(",", ":")).encode()).hexdigest()
        lines[1] = json.dumps(e, sort_keys=True, separators=(",", ":"))
        bad = 3
    path.write_text("\n".join(lines) + "\n")
    res = verify(path)
    assert not res.ok and res.bad_line == bad and res.entries == bad - 1, res
    with pytest.raises(LedgerError, match=f"line {bad}"):
        read_entries(path)
    before = path.read_bytes()
    with pytest.raises(LedgerError, match=f"broken at line {bad}"):
        append_entry(path, _entry(9))
    assert path.read_bytes() == before  # nothing appended to a broken chain


def test_verify_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path)
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK")
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"fp1"', '"fpX"')
    path.write_text("\n".join(lines) + "\n")
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("TAMPERED") and "line 2" in out
    assert main(["verify", str(tmp_path / "nope.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_verify_as_a_module(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path, 2)
    path.write_text(path.read_text().replace('"fp0"', '"fp9"'))
    out = subprocess.run([sys.executable, "-m", "lightning_tru.ledger", "verify", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "line 1" in out.stdout and out.stdout.count("\n") == 1


def test_torn_tail_is_truncated_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path, 2)
    intact = path.read_bytes()
    torn = b'{"fingerprint":"fp2","meth'  # a crash mid-write: no newline
    path.write_bytes(intact + torn)
    res = verify(path)
    assert res.ok and res.entries == 2 and res.torn_bytes == len(torn) and "torn" in str(res)
    assert len(read_entries(path)) == 2
    new = append_entry(path, _entry(2))
    assert new["torn_tail"] == {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
    assert new["seq"] == 2 and new["prev_hash"] == hashlib.sha256(intact.splitlines()[-1]).hexdigest()
    assert path.read_bytes().startswith(intact) and torn not in path.read_bytes()
    res = verify(path)
    assert res.ok and res.entries == 3 and res.torn_bytes == 0
    assert append_entry(path, _entry(3))["seq"] == 3 and verify(path).ok


def test_a_last_entry_without_its_newline_is_kept_not_torn(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _ledger(path, 3)
    intact = path.read_bytes()
    path.write_bytes(intact[:-1])  # the final newline removed: the last entry must not be dropped by the next append
    res = verify(path)
    assert res.ok and res.entries == 3 and res.torn_bytes == 0
    new = append_entry(path, _entry(3))
    assert new["seq"] == 3 and "torn_tail" not in new
    assert path.read_bytes().startswith(intact) and verify(path).ok and len(read_entries(path)) == 4


def test_a_torn_first_line_is_a_torn_empty_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"fing')
    assert verify(path).ok and verify(path).entries == 0
    e = append_entry(path, _entry(0))
    assert e["seq"] == 0 and e["prev_hash"] == GENESIS and e["torn_tail"]["bytes"] == 6 and verify(path).entries == 1


@pytest.mark.parametrize(("entry", "match"), [
    ({"method": "TRU"}, "no 'status'"),
    ({"status": "done"}, "must be a dict"),
    ({"status": {"target_reached": True, "steps": 3}}, r"lacks \['stopping_reason'\]"),
    ({"status": {"target_reached": 1, "stopping_reason": "x", "steps": 3}}, "target_reached'] must be bool"),
    ({"status": {"target_reached": True, "stopping_reason": "x", "steps": True}}, "steps'] must be int"),
    ({"status": {"target_reached": True, "stopping_reason": " ", "steps": 3}}, "empty"),
    ({"status": {"target_reached": False, "stopping_reason": "x", "steps": -1}}, ">= 0"),
    ({"status": {"target_reached": True, "stopping_reason": "x", "steps": 0}}, "did nothing"),
    ({"seq": 5, **_entry(0)}, "reserved"),
    ({**_entry(0), "metrics": {"x": float("nan")}}, "strict JSON"),
    ({**_entry(0), "path": Path("a")}, "strict JSON"),
])
def test_bad_entries_are_refused_and_nothing_is_written(tmp_path: Path, entry: dict, match: str) -> None:
    path = tmp_path / "ledger.jsonl"
    with pytest.raises(LedgerError, match=match):
        append_entry(path, entry)
    assert not path.exists()


def test_a_run_that_did_nothing_is_recorded_as_not_reached(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    e = append_entry(path, _entry(0, reached=False, steps=0))
    assert e["status"] == {"target_reached": False, "stopping_reason": "reached the target", "steps": 0}
    assert read_entries(path)[0]["status"]["target_reached"] is False


def test_check_ledger_path(tmp_path: Path) -> None:
    ckpt, data = tmp_path / "model.ckpt", tmp_path / "data" / "x.inter"
    data.parent.mkdir()
    ckpt.write_bytes(b"weights")
    data.write_text("userID\titemID\n")
    forbidden = [ckpt, data]
    with pytest.raises(LedgerError, match="is a directory"):
        check_ledger_path(tmp_path, forbidden)
    with pytest.raises(LedgerError, match="an input of this run"):
        check_ledger_path(ckpt, forbidden)
    with pytest.raises(LedgerError, match="an input of this run"):  # a relative, unnormalised spelling
        check_ledger_path(tmp_path / "data" / ".." / "data" / "x.inter", forbidden)
    link = tmp_path / "link.jsonl"
    link.symlink_to(ckpt)
    with pytest.raises(LedgerError, match="an input of this run"):
        check_ledger_path(link, forbidden)
    with pytest.raises(LedgerError, match="is a file, not a directory"):
        check_ledger_path(ckpt / "ledger.jsonl", [])
    not_a_ledger = tmp_path / "report.json"
    not_a_ledger.write_text('{"a": 1}\n')
    with pytest.raises(LedgerError, match="TAMPERED"):
        check_ledger_path(not_a_ledger, forbidden)
    good = tmp_path / "runs" / "ledger.jsonl"
    assert check_ledger_path(good, forbidden) == good.resolve() and not good.exists()  # nothing created
    _ledger(good, 1)
    assert check_ledger_path(good, forbidden) == good.resolve()
    assert ckpt.read_bytes() == b"weights"


def test_read_entries_of_a_missing_ledger(tmp_path: Path) -> None:
    assert read_entries(tmp_path / "none.jsonl") == []
    with pytest.raises(FileNotFoundError):
        read_entries(tmp_path / "none.jsonl", missing_ok=False)


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "ledger.jsonl"
    with ThreadPoolExecutor(4) as pool:  # each append opens its own descriptor: flock serialises them
        list(pool.map(lambda i: append_entry(path, _entry(i)), range(40)))
    res = verify(path)
    assert res.ok and res.entries == 40
    assert sorted(e["fingerprint"] for e in read_entries(path)) == sorted(f"fp{i}" for i in range(40))
