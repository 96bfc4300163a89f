r"""The item side of a data set: modality features and the item-item graphs derived from them.

Feature-derived structures depend on the features alone, and deletion requests never change
the features, so they are built once per data set and shared by every view of it: the
retained data of graph surgery, Retrain's data and each evaluation graph. Graph surgery then
replaces only the user-item graph.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from lightning_tru.nn import graph as graph_ops


class ItemContent:
    r"""Features as tensors and item-item graphs, each built once.

    :meth:`item_graphs` returns the precomputed graphs (MMRec ``knn_graphs`` files) and, for
    ``knn_k``, the normalised cosine top-``knn_k`` graph
    :math:`S_m = D^{-1/2} \mathrm{kNN}_k(\cos(F_m)) D^{-1/2}` of every other modality, built on
    first request and kept for that ``(modality, knn_k)``.

    Args:
        features: modality -> ``(I, d_m)`` float features.
        item_graphs: modality -> precomputed ``(I, I)`` item graph; it wins over a kNN build.
    """

    def __init__(self, features: Mapping[str, np.ndarray], item_graphs: Optional[Mapping[str, sp.spmatrix]] = None) -> None:
        self._features = {m: torch.from_numpy(np.ascontiguousarray(f)) for m, f in features.items()}
        self._precomputed = dict(item_graphs or {})
        self._knn: dict[tuple[str, int], sp.csr_matrix] = {}

    def feature_tensors(self) -> dict[str, Tensor]:
        """Modality -> ``(I, d_m)`` tensor; the same tensor objects on every call (no copies)."""
        return dict(self._features)

    def item_graphs(self, knn_k: Optional[int] = None) -> dict[str, sp.csr_matrix]:
        """Modality -> ``(I, I)`` graph: the precomputed ones, plus kNN graphs of the others when ``knn_k`` is given."""
        out = dict(self._precomputed)
        if knn_k is None:
            return out
        if isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1:
            raise ValueError(f"knn_k={knn_k!r} must be an integer >= 1 (neighbours per item), e.g. 10")
        for m, f in self._features.items():
            if m in out:
                continue
            if (m, knn_k) not in self._knn:
                self._knn[(m, knn_k)] = graph_ops.knn_graph(f.float(), knn_k)
            out[m] = self._knn[(m, knn_k)]
        return out
