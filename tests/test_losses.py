import math

import pytest
import torch

from lightning_tru.nn.losses import bpr_loss, info_nce, info_nce_batch, l2_penalty, reverse_bpr_loss


def test_bpr_and_reverse_bpr_match_formulas() -> None:
    pos, neg = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.5])
    ref = -sum(math.log(1 / (1 + math.exp(-(p - n)))) for p, n in zip(pos.tolist(), neg.tolist())) / 3
    rev = -sum(math.log(1 / (1 + math.exp(-(n - p)))) for p, n in zip(pos.tolist(), neg.tolist())) / 3
    assert abs(bpr_loss(pos, neg).item() - ref) < 1e-6
    assert abs(reverse_bpr_loss(pos, neg).item() - rev) < 1e-6
    # reverse BPR is bounded below by 0, unlike ascent on BPR
    big = torch.tensor([100.0]), torch.tensor([-100.0])
    assert reverse_bpr_loss(big[1], big[0]).item() >= 0.0
    assert -bpr_loss(*big).item() <= 0.0


def test_info_nce_matches_naive_loop() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    tau = 0.2
    ref = 0.0
    for k in range(5):
        num = math.exp(float(an[k] @ bn[k]) / tau)
        den = sum(math.exp(float(an[k] @ bn[j]) / tau) for j in range(5))
        ref -= math.log(num / den)
    assert abs(info_nce(a, b, tau).item() - ref / 5) < 1e-5


def test_l2_penalty() -> None:
    x, y = torch.ones(4, 2), 2 * torch.ones(4, 2)
    assert l2_penalty(x, y).item() == (8 + 32) / 8


def test_info_nce_batch_equals_repeated_batch_value_and_gradients() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(7, 4, dtype=torch.float64, requires_grad=True), torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([3, 0, 3, 5, 3, 6, 0, 2])  # repeats, as a BPR batch has
    full = info_nce(a[ids], b[ids], 0.2)
    ga, gb = torch.autograd.grad(full, (a, b))
    dedup = info_nce_batch(a, b, ids, 0.2)
    da, db = torch.autograd.grad(dedup, (a, b))
    torch.testing.assert_close(dedup, full)
    torch.testing.assert_close((da, db), (ga, gb))
    # no repeats: counts of one give the plain loss
    torch.testing.assert_close(info_nce(a, b, 0.5, torch.ones(7)), info_nce(a, b, 0.5))
    with pytest.raises(ValueError, match="one positive count per row"):
        info_nce(a, b, 0.5, torch.tensor([1, 0, 1, 1, 1, 1, 1]))


def test_info_nce_over_row_blocks_equals_the_dense_logits() -> None:
    """The fused, blocked InfoNCE (several blocks, the last one partial) gives the dense cross-entropy's value and
    gradients, with and without counts."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    n = 300  # > 2 blocks of 128 rows
    a, b = torch.randn(n, 5, dtype=torch.float64, requires_grad=True), torch.randn(n, 5, dtype=torch.float64, requires_grad=True)
    for counts in (None, torch.randint(1, 4, (n,))):
        c = torch.ones(n, dtype=torch.float64) if counts is None else counts.double()
        an, bn = F.normalize(a, dim=1) / 0.3, F.normalize(b, dim=1)
        per_row = torch.logsumexp(an @ bn.T + c.log(), 1) - (an * bn).sum(1)  # dense (n, n) logits
        ref = (c * per_row).sum() / c.sum()
        got = info_nce(a, b, 0.3, counts)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(torch.autograd.grad(got, (a, b)), torch.autograd.grad(ref, (a, b)))
    with torch.no_grad():  # no gradient work, the same value
        torch.testing.assert_close(info_nce(a, b, 0.3, counts), got.detach())
