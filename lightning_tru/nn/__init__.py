"""Backbones as plain ``nn.Module``s and the graph operators they share."""
from lightning_tru.nn.base import Backbone, BackboneFactory, Propagation, Snapshot
from lightning_tru.nn.graph import SparseGraph, knn_graph, normalized_bipartite, normalized_interactions
from lightning_tru.nn.lightgcn import LightGCN
from lightning_tru.nn.mf import MF
from lightning_tru.nn.mgcn import MGCN
from lightning_tru.nn.row_adam import RowAdam
from lightning_tru.nn.miggt import MIGGT

__all__ = [
    "Backbone",
    "BackboneFactory",
    "LightGCN",
    "MF",
    "MGCN",
    "MIGGT",
    "Propagation",
    "RowAdam",
    "Snapshot",
    "SparseGraph",
    "knn_graph",
    "normalized_bipartite",
    "normalized_interactions",
]
