"""Natural-like background textures, made procedurally (nothing downloaded, no image files shipped).

The ``natural`` shortcut kind of ``training.synthetic``: each spurious value is a *family* of textures
with the statistics of natural images rather than a fixed pattern: a 1/f^beta power spectrum (the
spectrum of photographs; beta per family, from smooth "sky/sand" to rough "grass/bark"), an
orientation bias of its own, and a palette of earthy colours that overlap between families. Every
image draws a fresh random phase, so no two backgrounds are alike, only their statistics are (like
photographs of grass, sand or foliage): a model must learn the texture's statistics to use the
shortcut, and a fill must stand in for a whole family, not one pattern.

Its sibling, the ``photo`` kind (``training.photo_backgrounds``), crops real photographs instead: a
handful of photographs, each seen in many crops, where this kind draws a new texture every time.
"""

from __future__ import annotations

import numpy as np

# per family: spectral slope beta, orientation (radians), anisotropy (0: isotropic), two palette colours
FAMILIES = (
    (2.6, 0.0, 0.0, (120, 140, 170), (200, 205, 215)),   # smooth, bluish grey: sky / clouds
    (1.4, 1.57, 0.7, (70, 100, 45), (140, 160, 80)),      # rough, vertical: grass
    (1.8, 0.0, 0.6, (95, 70, 50), (160, 125, 90)),        # horizontal grain: wood / bark
    (2.2, 0.8, 0.3, (150, 130, 95), (205, 185, 140)),     # soft, diagonal: sand / dunes
    (1.2, 0.0, 0.0, (85, 85, 80), (150, 145, 135)),       # fine, isotropic: gravel / stone
    (1.9, 2.4, 0.5, (60, 90, 70), (120, 150, 120)),       # anti-diagonal: foliage
)


def spectral_noise(size: int, beta: float, theta: float, anisotropy: float, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size`` field in [0, 1] with power spectrum ~ 1/f^beta, stretched along ``theta``."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    u = fx * np.cos(theta) + fy * np.sin(theta)
    v = -fx * np.sin(theta) + fy * np.cos(theta)
    f = np.sqrt(u ** 2 * (1.0 - anisotropy) ** 2 + v ** 2) + 1e-6
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, (size, size))
    field = np.real(np.fft.ifft2(amp * np.exp(1j * phase)))
    field -= field.min()
    return field / max(float(field.max()), 1e-9)


def natural_background(value: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An int16 ``size x size x 3`` background of family ``value`` (mod the number of families)."""
    beta, theta, aniso, lo, hi = FAMILIES[value % len(FAMILIES)]
    t = spectral_noise(size, beta, theta + rng.normal(0, 0.15), aniso, rng)
    lo_c = np.asarray(lo, dtype=np.float64) + rng.normal(0, 12, 3)  # per-image colour and light jitter
    hi_c = np.asarray(hi, dtype=np.float64) + rng.normal(0, 12, 3)
    img = lo_c + t[..., None] * (hi_c - lo_c)
    img += rng.normal(0, 6, (size, size, 3))  # sensor noise
    return img.clip(0, 255).astype(np.int16)
