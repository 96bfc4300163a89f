"""Purging: write retained interactions as a new MMRec folder, so the raw data can be replaced."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lightning_tru.datamodules.interactions import InteractionData


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_mmrec(data: InteractionData, folder: Path, name: str) -> Path:
    """Write ``data`` as an MMRec folder ``folder/{name}.inter, <modality>_feat.npy,
    knn_graphs/<modality>_adj_precomputed.npz}``, atomically.

    The files go to a hidden temporary sibling first and one ``rename`` publishes the folder, so a
    crash leaves either nothing or the complete folder. ``.inter`` is tab-separated with the header
    ``userID  itemID  x_label`` (what :func:`~lightning_tru.datamodules.mmrec.load_mmrec` reads).

    Raises:
        FileExistsError: ``folder`` exists (it is never overwritten).
    """
    folder = Path(folder).expanduser()
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; pass a new folder for the retained data")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".incomplete-{folder.name}-"))
    try:
        buf = io.StringIO()
        buf.write("userID\titemID\tx_label\n")
        np.savetxt(buf, np.column_stack([data.pairs, data.split.astype(np.int64)]), fmt="%d", delimiter="\t")
        _write(tmp / f"{name}.inter", buf.getvalue().encode())
        for m, f in data.features.items():
            arr = io.BytesIO()
            np.save(arr, f, allow_pickle=False)
            _write(tmp / f"{m}_feat.npy", arr.getvalue())
        if data.item_graphs:
            (tmp / "knn_graphs").mkdir()
            for m, g in data.item_graphs.items():
                sp.save_npz(tmp / "knn_graphs" / f"{m}_adj_precomputed.npz", sp.csr_matrix(g))
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
