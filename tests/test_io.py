"""Atomic writes: the old file or the new one, never a partial one, and no temporary left behind."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from lightning_tru.io import atomic_write, atomic_write_bytes


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"old")
    assert path.read_bytes() == b"old"

    def half(fh: BinaryIO) -> None:
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_bytes() == b"old" and sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]
