r"""Reset: graph surgery plus the deleted entities' rows re-drawn from the model's initialiser."""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.callbacks.surgery import Surgery
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models.protocol import entity_groups, initial_entity_table


def deleted_entities(dm: UnlearningDataModule) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` that had train interactions and have none left after the request.

    User-wise: exactly the request's users; item-wise: its items; interaction-wise: the users /
    items whose every train interaction is named (often none).
    """
    retained = dm.retained_train_csr()
    users, items = dm.forget.users, dm.forget.items
    user_left = np.diff(retained.tocsr().indptr)[users]
    item_left = np.bincount(retained.indices, minlength=retained.shape[1])[items]  # no CSC copy of the matrix
    return users[user_left == 0], items[item_left == 0]


class Reset(Surgery):
    r"""Floor: :class:`Surgery` plus the rows of deleted users / items in every entity table
    (:func:`~lightning_tru.models.protocol.entity_groups`) set to their initial values.

    A deleted user (no retained train interaction) never receives a gradient in Retrain, which
    starts from the seeded initial model, so Retrain's row for it *is* the initial row: the reset
    is exact. For a deleted item Retrain starts from the same row but still moves it as a BPR
    negative, so Reset gives Retrain's starting point there, not its end point.

    Initial rows come from the untrained model when one is handed over with :meth:`use_initial`
    (``unlearn.py`` keeps it as Retrain's starting point): they are then exactly Retrain's. Without
    it they are re-drawn from the backbone's own initialiser
    (``initial_entity_table(name, generator)``) with a generator seeded by ``seed`` and the table
    name: a draw of the same distribution, not the same values. ``edits`` records which.

    A model whose ``entity_parameters()`` names tables for one entity only (MIG-GT's items without
    ``use_item_embedding`` are computed from their content) has no row to re-draw for the other: those
    deleted entities are counted in ``edits["no_table"]`` and said in the stopping reason. A model that
    names no table at all is refused (it may simply not implement ``entity_parameters``).

    Args:
        k: cut-off of the recorded forget recall.
        seed: seed of the fallback draw.
    """

    def __init__(self, k: int = 20, seed: int = 0) -> None:
        super().__init__(k=k)
        self.seed = int(seed)
        self._initial: Optional[dict[str, Tensor]] = None

    def use_initial(self, initial: Union[nn.Module, Mapping[str, Tensor]]) -> None:
        """Take the entity rows from ``initial``: the untrained model (or its named parameters)."""
        items = initial.named_parameters() if isinstance(initial, nn.Module) else initial.items()
        self._initial = {n: t.detach().to("cpu", copy=True) for n, t in items}

    def initial_table(self, model: nn.Module, name: str, param: Tensor) -> tuple[Tensor, str]:
        """Entity table ``name`` as the untrained model holds it (``use_initial``) or a seeded draw from the
        initialiser, and where it came from."""
        if self._initial is not None:
            if name not in self._initial or self._initial[name].shape != param.shape:
                raise ValueError(
                    f"the initial model handed to Reset.use_initial has no table {name!r} of shape "
                    f"{tuple(param.shape)}; hand it the untrained copy of this very model"
                )
            return self._initial[name], "initial model"
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        table = initial_entity_table(model, name, g)
        if table.shape != param.shape:
            raise ValueError(f"initial_entity_table({name!r}) has shape {tuple(table.shape)}; expected {tuple(param.shape)}")
        return table, f"re-drawn from the initialiser (seed {self.seed})"

    @override
    def edit(self, model: nn.Module, dm: UnlearningDataModule) -> str:
        users, items = deleted_entities(dm)
        groups = entity_groups(model, dm.num_users, dm.num_items)
        params = dict(model.named_parameters())
        sources, tables, tableless = set(), [], {}
        for entity, rows in (("user", users), ("item", items)):
            if len(rows) == 0:
                continue
            names = groups.get(entity, [])
            if not names and groups:  # the model names its tables, none for this entity: shared layers represent it
                tableless[entity] = int(len(rows))
                continue
            if not names:
                raise ValueError(
                    f"Reset must re-draw {len(rows)} deleted {entity} rows but {type(model).__name__} names no "
                    f"{entity} table; implement entity_parameters() (see lightning_tru.models.protocol)"
                )
            idx = torch.as_tensor(rows, dtype=torch.long)
            for name in names:
                p = params[name]
                table, source = self.initial_table(model, name, p)
                with torch.no_grad():
                    p[idx.to(p.device)] = table[idx].to(device=p.device, dtype=p.dtype)
                sources.add(source)
                tables.append(name)
        n_users, n_items = (int(len(r)) - tableless.get(e, 0) for e, r in (("user", users), ("item", items)))
        self.edits = {"reset_users": n_users, "reset_items": n_items, "tables": tables,
                      "source": " + ".join(sorted(sources)) or "none", "no_table": tableless}
        what = (f"{n_users} user and {n_items} item rows of {len(tables)} entity tables reset"
                + (f" ({self.edits['source']})" if tables else "")
                + "".join(f"; {n} deleted {e}s have no row to re-draw ({type(model).__name__} has no {e} table: "
                          f"shared layers represent them)" for e, n in tableless.items()))
        return f"graph surgery + {what}"
