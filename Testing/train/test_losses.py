"""The training loss: perfect predictions cost nothing, background never pulls an organ up, and
organs a case does not annotate get no gradient at all."""
from __future__ import annotations

import math

import pytest
import torch

from segmatecore.models import SegMateOutput
from segmatecore.data.organs import OrganSet, PAPER_ORGANS
from segmatecore.train.losses import SegMateLoss, bce_loss, class_weights_for

PAPER = OrganSet(PAPER_ORGANS)  # the organs of a model made with the defaults

KEYS = list(PAPER_ORGANS)
C = len(KEYS)


def masks(batch: int = 2, size: int = 32) -> torch.Tensor:
    """Disjoint square organs in every channel except trachea (empty)."""
    target = torch.zeros(batch, C, size, size)
    for k in range(C - 1):
        r, c = 3 * (k // 3) * 3 + 2, 3 * (k % 3) * 3 + 2
        target[:, k, r:r + 6, c:c + 6] = 1
    return target


def outputs(seg, boundary=None, presence=None, deep=()):
    return SegMateOutput(seg, seg if boundary is None else boundary,
                         torch.zeros(seg.shape[:2]) if presence is None else presence, tuple(deep))


def test_perfect_prediction_gives_near_zero_loss():
    target = masks()
    logits = (target * 2 - 1) * 30.0
    presence = target.amax(dim=(2, 3))
    annotated = torch.ones(2, C)
    presence_logits = (presence * 2 - 1) * 30.0
    total, terms = SegMateLoss(KEYS)(outputs(logits, presence=presence_logits, deep=(logits,) * 3),
                                 target, annotated, presence)
    assert total.item() < 0.02, terms
    assert terms["dice"] < 1e-3 and terms["ce"] < 1e-6 and terms["focal"] < 1e-6
    # and a wrong prediction costs a lot
    wrong, _ = SegMateLoss(KEYS)(outputs(-logits, presence=-presence_logits, deep=(-logits,) * 3), target, annotated,
                                 presence)
    assert wrong.item() > 10


def test_presence_is_trained_from_logits_without_saturating():
    """A confidently wrong presence logit costs in proportion to its confidence (no clamped probability)."""
    from segmatecore.train.losses import presence_loss

    target, annotated = torch.ones(1, C), torch.ones(1, C, dtype=torch.bool)
    assert presence_loss(torch.full((1, C), 50.0), target, annotated).item() < 1e-6
    assert presence_loss(torch.full((1, C), -50.0), target, annotated).item() == pytest.approx(50.0, rel=1e-4)
    logits = torch.zeros(1, C, requires_grad=True)
    presence_loss(logits, target, annotated).backward()
    torch.testing.assert_close(logits.grad, torch.full((1, C), -0.5 / C))


def test_background_pixels_push_every_organ_down():
    torch.manual_seed(0)
    target = masks()
    seg = torch.randn(2, C, 32, 32, requires_grad=True)
    deep = [torch.randn(2, C, 32, 32, requires_grad=True) for _ in range(3)]
    total, _ = SegMateLoss(KEYS)(outputs(seg, boundary=torch.randn(2, C, 32, 32), deep=deep), target,
                             torch.ones(2, C), target.amax(dim=(2, 3)))
    total.backward()
    background = (target.sum(dim=1, keepdim=True) == 0).expand_as(seg)
    for logits in [seg] + deep:
        grad = logits.grad[background]
        assert (grad >= 0).all(), "a background pixel pulled an organ logit up"
        assert (grad > 0).float().mean() > 0.99
    # inside organ k, its own logit is pulled up (negative gradient)
    for k in range(C - 1):
        assert (seg.grad[:, k][target[:, k] > 0] < 0).all()


def test_background_is_not_trained_as_left_lung():
    """The research code's argmax CE made left lung the label of every background pixel."""
    target = torch.zeros(1, C, 8, 8)
    seg = torch.full((1, C, 8, 8), -10.0)
    seg[:, 0] = 10.0  # confident "left lung" everywhere
    high = bce_loss(seg, target, torch.ones(1, C), torch.tensor(class_weights_for(KEYS)))
    seg[:, 0] = -10.0
    low = bce_loss(seg, target, torch.ones(1, C), torch.tensor(class_weights_for(KEYS)))
    assert high > 1.0 > 0.01 > low


def test_unannotated_organ_gets_no_gradient():
    torch.manual_seed(1)
    target = masks()
    annotated = torch.ones(2, C)
    unknown = KEYS.index("liver")
    annotated[:, unknown] = 0          # no case annotates the liver
    annotated[1, KEYS.index("aorta")] = 0  # only the first case annotates the aorta
    seg = torch.randn(2, C, 32, 32, requires_grad=True)
    boundary = torch.randn(2, C, 32, 32, requires_grad=True)
    presence = torch.randn(2, C, requires_grad=True)
    deep = [torch.randn(2, C, 32, 32, requires_grad=True) for _ in range(3)]
    total, _ = SegMateLoss(KEYS)(outputs(seg, boundary, presence, deep), target, annotated, target.amax(dim=(2, 3)))
    total.backward()
    for tensor in [seg, boundary] + deep:
        assert torch.count_nonzero(tensor.grad[:, unknown]) == 0
        assert torch.count_nonzero(tensor.grad[1, KEYS.index("aorta")]) == 0
        assert torch.count_nonzero(tensor.grad[0, KEYS.index("aorta")]) > 0
    assert torch.count_nonzero(presence.grad[:, unknown]) == 0
    assert torch.count_nonzero(presence.grad[1, KEYS.index("aorta")]) == 0
    # the loss does not depend on what the network says about an unannotated organ
    seg2 = seg.detach().clone()
    seg2[:, unknown] = 50.0
    a, _ = SegMateLoss(KEYS)(outputs(seg.detach(), boundary.detach(), presence.detach(), [d.detach() for d in deep]),
                         target, annotated, target.amax(dim=(2, 3)))
    b, _ = SegMateLoss(KEYS)(outputs(seg2, boundary.detach(), presence.detach(), [d.detach() for d in deep]),
                         target, annotated, target.amax(dim=(2, 3)))
    assert torch.allclose(a, b)


def test_class_weights_raise_the_cost_of_small_organs_voxels():
    """Weights belong to an organ's own voxels (as a class-weighted CE); its background weighs 1."""
    target = torch.zeros(1, C, 8, 8)
    target[:, :, :4] = 1  # half of every channel is organ
    seg = torch.zeros(1, C, 8, 8)
    costs = {}
    for key in ("left_lung", "aorta"):
        annotated = torch.zeros(1, C)
        annotated[0, KEYS.index(key)] = 1
        costs[key] = bce_loss(seg, target, annotated, torch.tensor(class_weights_for(KEYS))).item()
    assert costs["aorta"] / costs["left_lung"] == pytest.approx((6 + 1) / (1 + 1))
    annotated = torch.ones(1, C)
    empty = torch.zeros(1, C, 8, 8)
    assert bce_loss(seg, empty, annotated, torch.tensor(class_weights_for(KEYS))).item() == pytest.approx(math.log(2))
