"""Endoscope photometry augmentation: what real video processors do to brightness, so brightness stops being depth.

A model trained on rendered frames learns the renderer's brightness-to-depth mapping (a point light at the camera,
inverse-square fall-off, one display gamma). Real endoscopes put the picture through other tone curves, wide
dynamic range and "structure enhancement" processing that lift the dark lumen and flatten large-scale brightness,
plus white balance and JPEG. Fed such frames, a renderer-trained model compresses its near-to-far profile: with a
logarithmic tone curve applied to held-out synthetic frames the shipped v1 model's output goes from ``depth^-0.98``
to ``depth^-0.61`` (``Testing/benchmarks/eval_default_model.py``, "tone" section). Training on frames whose tone is
randomised with the transforms below keeps brightness *ordering* (every curve is monotone) but not its magnitude, so
the network has to read depth from shading shape, texture scale, occlusion and perspective.

Each function takes display values float32 ``[H, W, 3]`` in [0, 1] and returns a new array of the same shape;
``augment_photometry`` draws one combination from a generator. Depth and validity are never touched, except by
``scope_mask``, which also says which pixels it blanked.

``low_frequency_swap`` goes further than any curve: it gives a rendered frame the broad look of a *real* frame
(Fourier Domain Adaptation, Yang & Soatto, CVPR 2020: the amplitude of the lowest spatial frequencies is taken
from the real frame, the phase, which carries the geometry, is kept), so the network meets real frames' overall
colour, shading and exposure on frames whose depth is exact (:mod:`.style_frames` draws the real frames).
"""
from __future__ import annotations

import cv2
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma weights


def gamma_curve(image: np.ndarray, exponent: float) -> np.ndarray:
    """``x ** exponent`` (monotone; < 1 lifts the darks, > 1 deepens them)."""
    return np.power(np.clip(image, 0.0, 1.0), np.float32(exponent)).astype(np.float32)


def log_curve(image: np.ndarray, strength: float) -> np.ndarray:
    """Wide-dynamic-range compression ``log(1 + k·x) / log(1 + k)`` with ``k = strength`` (> 0; monotone)."""
    k = np.float32(strength)
    return (np.log1p(k * np.clip(image, 0.0, 1.0)) / np.log1p(k)).astype(np.float32)


def black_lift(image: np.ndarray, level: float) -> np.ndarray:
    """``level + (1 - level) · x``: the lumen never goes black (stray light, a raised black level)."""
    return (np.float32(level) + np.float32(1.0 - level) * image).astype(np.float32)


def local_adaptation(image: np.ndarray, amount: float, sigma_fraction: float) -> np.ndarray:
    """Divide out a power of the large-scale luminance, as local tone mapping / structure enhancement does.

    ``out = x · (B / mean(B)) ** -amount`` with ``B`` the luminance blurred by a Gaussian of
    ``sigma_fraction · min(H, W)`` pixels; ``amount`` in [0, 1] (0 = unchanged, 1 = large-scale brightness removed).
    Fine detail (texture, vessels, specular spots) keeps its local contrast; the brightness gradient from the near
    wall to the far lumen shrinks. Rescaled so the 99th percentile stays where it was, then clipped to [0, 1].
    """
    luma = image @ LUMA
    sigma = max(1.0, sigma_fraction * min(image.shape[:2]))
    base = cv2.GaussianBlur(luma, (0, 0), sigma) + np.float32(1e-3)
    gain = np.power(base / np.float32(base.mean()), np.float32(-amount))
    out = image * gain[..., None]
    before, after = np.percentile(luma, 99), np.percentile(out @ LUMA, 99)
    if after > 1e-6:
        out *= np.float32(before / after)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def white_balance(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Per-channel gains ``[3]`` (R, G, B), clipped to [0, 1]."""
    return np.clip(image * np.asarray(gains, np.float32), 0.0, 1.0).astype(np.float32)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through an 8-bit JPEG of ``quality`` (1–100): block artefacts and chroma subsampling."""
    rgb8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def scope_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random scope field of view: bool ``[H, W]``, True inside a centred circle or octagon (endoscope video
    processors black out the rest), sometimes with on-screen text boxes cut out (the blanked pixels are False)."""
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = rng.uniform(0.6, 0.95) * np.hypot(cy + 0.5, cx + 0.5)  # 1 = the corners
    if rng.random() < 0.5:  # circle
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    else:  # octagon: a rectangle with cut corners
        half_h, half_w = cy + 0.5, min(cx + 0.5, radius)  # full height, sides and corners cut
        dy, dx = np.abs(yy - cy), np.abs(xx - cx)
        inside = (dy <= half_h) & (dx <= half_w) & (dy + dx <= rng.uniform(0.75, 0.95) * (half_h + half_w))
    for _ in range(int(rng.integers(0, 3))):  # overlay boxes (date, scope position) in a corner
        bh, bw = int(rng.uniform(0.05, 0.15) * height), int(rng.uniform(0.1, 0.3) * width)
        y0 = 0 if rng.random() < 0.5 else height - bh
        x0 = 0 if rng.random() < 0.5 else width - bw
        inside[y0:y0 + bh, x0:x0 + bw] = False
    return inside


def augment_photometry(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random combination: local adaptation (p 0.5), a tone curve (p 0.8: gamma 0.45–1.8 log-uniform, or
    logarithmic k 3–60, then a black lift 0–0.15 half of the time), white balance ±15 % (p 0.5), JPEG q 35–95 (p 0.4).
    """
    out = np.asarray(image, np.float32)
    if rng.random() < 0.5:
        out = local_adaptation(out, float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.08, 0.3)))
    if rng.random() < 0.8:
        if rng.random() < 0.5:
            out = gamma_curve(out, float(np.exp(rng.uniform(np.log(0.45), np.log(1.8)))))
        else:
            out = log_curve(out, float(np.exp(rng.uniform(np.log(3.0), np.log(60.0)))))
        if rng.random() < 0.5:
            out = black_lift(out, float(rng.uniform(0.0, 0.15)))
    if rng.random() < 0.5:
        out = white_balance(out, rng.uniform(0.85, 1.15, 3))
    if rng.random() < 0.4:
        out = jpeg(out, int(rng.integers(35, 96)))
    return out


def _centred_spectrum(image: np.ndarray) -> np.ndarray:
    """2-D DFT of each channel of float32 ``[H, W, C]``, zero frequency moved to the centre: complex64 ``[H, W, C]``."""
    return np.fft.fftshift(np.fft.fft2(np.asarray(image, np.float32), axes=(0, 1)), axes=(0, 1))


def amplitude_spectrum(image: np.ndarray) -> np.ndarray:
    """Amplitude of the 2-D DFT of each channel, zero frequency moved to the centre (``fftshift``): float32
    ``[H, W, C]`` for an image ``[H, W, C]`` (float32 in, float32 out)."""
    return np.abs(_centred_spectrum(image)).astype(np.float32)


def low_frequency_swap(image: np.ndarray, reference_amplitude: np.ndarray, half_width: int) -> np.ndarray:
    """Fourier Domain Adaptation (Yang & Soatto, CVPR 2020, eq. 3): ``image`` with the amplitude of its lowest
    spatial frequencies replaced by ``reference_amplitude``'s, phase kept, clipped to [0, 1].

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        reference_amplitude: ``amplitude_spectrum`` of the reference, ``[H, W, 3]`` (the same size).
        half_width: the centred window ``[H//2 - b, H//2 + b] x [W//2 - b, W//2 + b]`` of the shifted spectrum
            (``b = half_width`` >= 0 frequency bins; 0 = the mean colour alone) takes the reference's amplitude.
    Returns:
        float32 ``[H, W, 3]``: the same edges and texture (phase), the reference's mean colour and broad shading.
    """
    reference_amplitude = np.asarray(reference_amplitude, np.float32)
    if reference_amplitude.shape != np.shape(image):
        raise ValueError(f"reference amplitude {reference_amplitude.shape} must match image {np.shape(image)}")
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    spectrum = _centred_spectrum(image)
    amplitude, phase = np.abs(spectrum), np.angle(spectrum)
    cy, cx, b = spectrum.shape[0] // 2, spectrum.shape[1] // 2, int(half_width)
    window = np.s_[max(0, cy - b):cy + b + 1, max(0, cx - b):cx + b + 1]
    amplitude[window] = reference_amplitude[window]
    out = np.fft.ifft2(np.fft.ifftshift(amplitude * np.exp(1j * phase), axes=(0, 1)), axes=(0, 1)).real
    return np.clip(out, 0.0, 1.0).astype(np.float32)
