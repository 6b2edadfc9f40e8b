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


# -- independent references (float64 numpy, one image at a time) --------------------------------------------------
def _ref_l1(p, t, normalize):
    """Paper's fine-tuning L1; with ``normalize`` each map divided by its own mean first (the documented variant)."""
    if normalize:
        p, t = p / p.mean(), t / t.mean()
    return np.abs(p - t).mean()


def _ref_silog(p, t, lambd):
    """Eigen et al. 2014 eq. 4 with the square root of DA-V2 ``metric_depth/util/loss.py``: sqrt(D - λ M²)."""
    d = np.log(t) - np.log(p)
    return np.sqrt((d ** 2).mean() - lambd * d.mean() ** 2)


def _ref_ssi(p_img, t_img, v_img, gradient_weight=0.0, scales=4):
    """MiDaS: least-squares (s, t) over the valid pixels (np.linalg.lstsq), then the mean absolute residual; the
    gradient term sums, over scales 2^k, |differences| of the residual between valid neighbours divided by the
    number of valid pixels at that scale (the docstring's mean_valid)."""
    p, t = p_img[v_img], t_img[v_img]
    s, sh = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), t, rcond=None)[0]
    value = np.abs(s * p + sh - t).mean()
    r = s * p_img + sh - t_img
    grad = 0.0
    for k in range(scales):
        rk, vk = r[::2 ** k, ::2 ** k], v_img[::2 ** k, ::2 ** k]
        gx = np.abs(np.diff(rk, axis=1))[vk[:, 1:] & vk[:, :-1]].sum()
        gy = np.abs(np.diff(rk, axis=0))[vk[1:] & vk[:-1]].sum()
        grad += (gx + gy) / max(vk.sum(), 1)
    return value + gradient_weight * grad


def _uneven_batch():
    """Three images with very different valid counts (80, 9, 35): a per-pixel (pooled) mean differs from the
    documented mean of per-image values."""
    pred, target, _ = batch(7)
    valid = torch.zeros(pred.shape, dtype=torch.bool)
    valid[0] = True
    valid[1, 2:5, 3:6] = True
    valid[2, :5, :7] = True
    return pred, target, valid


@pytest.mark.parametrize("name", ["l1", "l1_plain", "silog", "silog_lambda1", "ssi", "ssi_gradient"])
def test_losses_equal_independent_formulas_as_a_mean_over_images(name):
    """Audit: each loss equals its paper's formula, computed per image over the valid pixels and averaged over the
    images (not pooled over the batch's pixels). Catches a formula or reduction drifting from its docstring."""
    pred, target, valid = _uneven_batch()
    ref_of = {"l1": lambda p, t, v: _ref_l1(p[v], t[v], True), "l1_plain": lambda p, t, v: _ref_l1(p[v], t[v], False),
              "silog": lambda p, t, v: _ref_silog(p[v], t[v], 0.5),
              "silog_lambda1": lambda p, t, v: _ref_silog(p[v], t[v], 1.0),
              "ssi": lambda p, t, v: _ref_ssi(p, t, v), "ssi_gradient": lambda p, t, v: _ref_ssi(p, t, v, 0.5)}
    loss_of = {"l1": lambda *a: l1_loss(*a), "l1_plain": lambda *a: l1_loss(*a, normalize=False),
               "silog": lambda *a: silog_loss(*a), "silog_lambda1": lambda *a: silog_loss(*a, lambd=1.0),
               "ssi": lambda *a: ssi_loss(*a), "ssi_gradient": lambda *a: ssi_loss(*a, gradient_weight=0.5)}
    per_image = [ref_of[name](p, t, v) for p, t, v in zip(pred.numpy(), target.numpy(), valid.numpy())]
    value = loss_of[name](pred, target, valid).item()
    assert value == pytest.approx(np.mean(per_image), rel=1e-12)
    if name == "l1_plain":  # the batch really tells the two reductions apart
        assert abs(value - (pred - target).abs()[valid].mean().item()) > 1e-3


GARBAGE = [float("nan"), float("inf"), -float("inf"), 1e30, -7.0]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("loss", [l1_loss, silog_loss, ssi_loss, lambda *a: ssi_loss(*a, gradient_weight=0.5)],
                         ids=["l1", "silog", "ssi", "ssi_gradient"])
def test_pixels_outside_valid_change_neither_the_loss_nor_any_gradient(loss, garbage):
    """Catches: NaN/inf predictions outside ``valid`` reaching the SSI value through ``0 * NaN`` in the normal
    equations (a singular fit gave s = t = 0 and a wrong, finite loss; with the gradient term the loss was NaN),
    and, for L1, NaN gradients on every valid pixel of the image (``torch.where`` blocks the value but the mean
    normaliser's backward multiplies the masked NaN by zero). Garbage in the target must not matter either."""
    pred, target, valid = batch(5)
    clean = pred.clone().requires_grad_(True)
    reference = loss(clean, target, valid)
    reference.backward()
    dirty_pred, dirty_target = pred.clone(), target.clone()
    dirty_pred[~valid], dirty_target[~valid] = garbage, garbage
    dirty = dirty_pred.requires_grad_(True)
    value = loss(dirty, dirty_target, valid)
    value.backward()
    assert value.item() == reference.item()
    assert torch.equal(dirty.grad[valid], clean.grad[valid]) and bool((dirty.grad[~valid] == 0).all())


def test_ssi_scale_and_shift_accurate_in_float32_for_an_offset_prediction():
    """Catches: the scale-and-shift fit solved from the raw normal equations, whose ``n Σp² - (Σp)²`` cancels in
    float32 when the disparity's offset dwarfs its spread: at 20 ± 0.01 the scale came out 0.46 instead of 1.5 and
    the SSI loss was 20x its float64 value. Training runs in float32, so the loss is checked against float64."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 64, 96, generator=g, dtype=torch.float64)
    pred = 20 + 0.01 * u
    target = 1.5 * (pred - 20) + 0.01 + 1e-4 * torch.rand(2, 64, 96, generator=g, dtype=torch.float64)
    valid = torch.rand(2, 64, 96, generator=g) > 0.3
    s64, t64 = fit_scale_shift_batched(pred, target, valid)
    s32, t32 = fit_scale_shift_batched(pred.float(), target.float(), valid)
    assert s32.double().numpy() == pytest.approx(s64.numpy(), rel=1e-3)
    assert (s32 * 20 + t32).double().numpy() == pytest.approx((s64 * 20 + t64).numpy(), abs=1e-4)  # fit at p̄
    exact = ssi_loss(pred, target, valid).item()
    assert ssi_loss(pred.float(), target.float(), valid).item() == pytest.approx(exact, rel=1e-2)


@pytest.mark.parametrize("loss", [l1_loss, silog_loss, ssi_loss])
@pytest.mark.parametrize("case", ["pred_zero_image", "pred_zero_pixels", "pred_huge", "target_huge", "target_tiny"])
def test_gradients_finite_at_zero_and_extreme_values(loss, case):
    """Audit: a ReLU head's zeros (a whole image or some pixels) and huge/tiny float32 values inside ``valid`` give
    a finite loss and finite gradients (SILog clamps before the log; L1's normaliser is clamped; SSI's singular fit
    falls back to s = t = 0). Catches a loss that turns one bad image into a NaN step for the batch."""
    pred, target, valid = (x.float() if x.is_floating_point() else x for x in batch(6))
    if case == "pred_zero_image":
        pred[0] = 0
    elif case == "pred_zero_pixels":
        pred[:, :3] = 0
    elif case == "pred_huge":
        pred = pred * 1e15
    elif case == "target_huge":
        target = target * 1e15
    else:
        target = target * 1e-12
    pred.requires_grad_(True)
    value = loss(pred, target, valid)
    value.backward()
    assert torch.isfinite(value) and bool(torch.isfinite(pred.grad).all())
