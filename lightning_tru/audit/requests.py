"""User-wise deletion requests built in code (fake users of a backdoor, held-out users of a shadow model)."""
from __future__ import annotations

import numpy as np

from lightning_tru.datamodules.forget import ForgetSet
from lightning_tru.datamodules.interactions import TRAIN, InteractionData


def users_forget_set(data: InteractionData, users: np.ndarray) -> ForgetSet:
    """The user-wise :class:`ForgetSet` of every train interaction of ``users``."""
    train = data.split_pairs(TRAIN)
    mask = np.isin(train[:, 0], np.asarray(users, dtype=np.int64))
    if not mask.any() or mask.all():
        raise ValueError(f"the users hold {int(mask.sum())} of {len(train)} train interactions; "
                         "name users with train rows, and not all of them")
    return ForgetSet.split(train, mask, "user")
