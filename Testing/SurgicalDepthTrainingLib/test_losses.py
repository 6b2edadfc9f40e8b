"""losses: values against direct per-image numpy computations, invariances and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from SurgicalDepthTrainingLib.losses import fit_scale_shift_batched, l1_loss, masked_median, silog_loss, ssi_loss


def batch(seed=0, b=3, h=8, w=10):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, h, w, generator=g, dtype=torch.float64) + 0.2
    pred = torch.rand(b, h, w, generator=g, dtype=torch.float64) + 0.2
    valid = torch.rand(b, h, w, generator=g) > 0.3
    return pred, target, valid


def test_l1_plain_and_normalised():
    pred, target, valid = batch()
    ref = np.mean([np.abs(p[v] - t[v]).mean() for p, t, v in zip(pred.numpy(), target.numpy(), valid.numpy())])
    assert l1_loss(pred, target, valid, normalize=False).item() == pytest.approx(ref)
    # normalised: invariant to a per-image scale of pred and of target; zero for proportional maps
    k = torch.tensor([2.0, 7.0, 0.1], dtype=torch.float64)[:, None, None]
    assert l1_loss(pred * k, target / k, valid).item() == pytest.approx(l1_loss(pred, target, valid).item())
    assert l1_loss(target * k, target, valid).item() == pytest.approx(0, abs=1e-12)


def test_masked_median_matches_numpy_lower_median():
    pred, _, valid = batch(1)
    med = masked_median(pred, valid)
    for i in range(pred.shape[0]):
        vals = np.sort(pred[i][valid[i]].numpy())
        assert med[i].item() == vals[(len(vals) - 1) // 2]


def test_silog():
    pred, target, valid = batch(2)
    refs = []
    for p, t, v in zip(pred.numpy(), target.numpy(), valid.numpy()):
        d = np.log(t[v]) - np.log(p[v])
        refs.append(np.sqrt((d ** 2).mean() - 0.5 * d.mean() ** 2))
    assert silog_loss(pred, target, valid).item() == pytest.approx(np.mean(refs))
    # same for inverse depth; scale-invariant with lambda = 1
    assert silog_loss(1 / pred, 1 / target, valid).item() == pytest.approx(np.mean(refs))
    assert silog_loss(3 * target, target, valid, lambd=1.0).item() < 1e-5


def test_ssi_fits_affine_and_matches_reference():
    pred, target, valid = batch(3)
    assert ssi_loss(2.5 * target - 0.1, target, valid).item() == pytest.approx(0, abs=1e-9)
    s, t = fit_scale_shift_batched(pred, target, valid)
    for i in range(pred.shape[0]):
        p, y = pred[i][valid[i]].numpy(), target[i][valid[i]].numpy()
        ref = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), y, rcond=None)[0]
        assert (s[i].item(), t[i].item()) == pytest.approx(tuple(ref))
    with_grad = ssi_loss(pred, target, valid, gradient_weight=0.5)
    assert with_grad.item() > ssi_loss(pred, target, valid).item()


@pytest.mark.parametrize("loss", [l1_loss, silog_loss, ssi_loss])
def test_gradients_finite_with_empty_image(loss):
    pred, target, valid = batch(4)
    valid[1] = False
    pred = pred.clone().requires_grad_(True)
    value = loss(pred, target, valid)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().sum() == 0


@pytest.mark.parametrize("loss", [l1_loss, silog_loss, ssi_loss])
def test_errors(loss):
    pred, target, valid = batch()
    with pytest.raises(ValueError, match="same shape"):
        loss(pred, target[:, :4], valid)
    with pytest.raises(ValueError, match="no image"):
        loss(pred, target, torch.zeros_like(valid))
