"""training.noise: exactly the masked pixels change, to values in the documented ranges."""

from __future__ import annotations

import pytest
import torch

from training.noise import (
    MIXTURE_MODES,
    NOISE_MODES,
    STRIPE_PERIOD,
    STRIPE_WIDTH,
    apply_noise,
    noise_fill,
)

B, H, W = 24, 17, 23
RANGES = {"pure_black": (0, 0), "noise": (0, 255), "noise_weak": (64, 191), "noise_minor": (96, 159),
          "random_pure": (0, 255), "hstrips": (0, 255), "vstrips": (0, 255), "mixture": (0, 255)}


def batch(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g).to(dtype)
    mask = torch.rand(B, 1, H, W, generator=g) < 0.4
    mask[0] = False  # one unpainted sample
    mask[1] = True  # one fully painted sample
    return x, mask


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    k = t.double() * 255
    assert torch.allclose(k, k.round(), atol=1e-3), "fill values must be k / 255"
    return k.round().long()


@pytest.mark.parametrize("mode", NOISE_MODES)
def test_only_masked_pixels_change(mode):
    x, mask = batch()
    x_before = x.clone()
    y = apply_noise(x, mask, mode, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(x, x_before), "input must not be modified"
    m = mask.expand_as(x)
    assert torch.equal(y[~m], x[~m]), "unmasked pixels must be bit-identical"
    k = as_bytes(y[m])
    lo, hi = RANGES[mode]
    assert int(k.min()) >= lo and int(k.max()) <= hi
    if mode in ("noise", "noise_weak", "noise_minor", "mixture"):
        assert int(k.min()) <= lo + 8 and int(k.max()) >= hi - 8, "noise should cover its range"


def test_pure_black():
    x, mask = batch()
    y = apply_noise(x, mask, "pure_black")
    assert (y[mask.expand_as(x)] == 0).all()


@pytest.mark.parametrize("mode", ["noise", "noise_weak", "noise_minor"])
def test_pixel_noise_is_independent_per_pixel_and_channel(mode):
    x = torch.zeros(4, 3, 32, 32)
    y = apply_noise(x, torch.ones(4, 1, 32, 32, dtype=torch.bool), mode, torch.Generator().manual_seed(0))
    k = as_bytes(y)
    lo, hi = RANGES[mode]
    assert len(torch.unique(k)) == hi - lo + 1  # every value of the range appears
    assert (k[:, 0] != k[:, 1]).float().mean() > 0.9  # channels differ
    assert abs(k.float().mean().item() - (lo + hi) / 2) < 3


def test_random_pure_one_colour_per_sample():
    x, mask = batch()
    y = apply_noise(x, mask, "random_pure", torch.Generator().manual_seed(2))
    colours = []
    for i in range(1, B):
        px = y[i][:, mask[i, 0]]  # [3, n]
        assert (px == px[:, :1]).all(), "one colour over the whole mask of a sample"
        colours.append(tuple(as_bytes(px[:, 0]).tolist()))
    assert len(set(colours)) > B // 2, "colours vary between samples"


@pytest.mark.parametrize("mode", ["hstrips", "vstrips"])
def test_stripes(mode):
    x = torch.full((6, 3, H, W), 0.5)
    mask = torch.ones(6, 1, H, W, dtype=torch.bool)
    y = apply_noise(x, mask, mode, torch.Generator().manual_seed(3))
    idx = torch.arange(H if mode == "hstrips" else W)
    on = idx % STRIPE_PERIOD < STRIPE_WIDTH
    for i in range(6):
        img = y[i] if mode == "hstrips" else y[i].transpose(1, 2)  # stripes along dim 1
        colour = img[:, 0, 0]
        assert (img[:, on] == colour.view(3, 1, 1)).all()
        assert (img[:, ~on] == 0).all()
    assert len({tuple(y[i, :, 0, 0].tolist()) for i in range(6)}) > 1


def test_mixture_varies_per_sample_and_each_sample_follows_its_mode():
    g = torch.Generator().manual_seed(5)
    fill, modes = noise_fill((64, 3, 20, 20), "mixture", generator=g)
    assert modes.shape == (64,)
    assert len(torch.unique(modes)) >= 5, "mixture must really pick a mode per sample"
    rows_on = torch.arange(20) % STRIPE_PERIOD < STRIPE_WIDTH
    for i in range(64):
        name = MIXTURE_MODES[int(modes[i])]
        k = as_bytes(fill[i])
        lo, hi = RANGES[name]
        if name == "pure_black":
            assert (k == 0).all()
        elif name in ("noise", "noise_weak", "noise_minor"):
            assert int(k.min()) >= lo and int(k.max()) <= hi and len(torch.unique(k)) > 20
        elif name == "random_pure":
            assert (k == k[:, :1, :1]).all()
        elif name == "hstrips":
            assert (k[:, ~rows_on] == 0).all() and (k[:, rows_on] == k[:, :1, :1]).all()
        else:
            assert (k[:, :, ~rows_on] == 0).all() and (k[:, :, rows_on] == k[:, :1, :1]).all()


def test_mixture_through_apply_noise_varies():
    x = torch.full((32, 3, 10, 10), 0.5)
    y = apply_noise(x, torch.ones(32, 1, 10, 10, dtype=torch.bool), "mixture", torch.Generator().manual_seed(0))
    per_sample_std = y.flatten(1).std(dim=1)
    assert (per_sample_std == 0).any() and (per_sample_std > 0.1).any()  # flat fills and noisy ones


def test_generator_reproducible():
    x, mask = batch()
    for mode in NOISE_MODES:
        a = apply_noise(x, mask, mode, torch.Generator().manual_seed(9))
        b = apply_noise(x, mask, mode, torch.Generator().manual_seed(9))
        assert torch.equal(a, b)


def test_mask_forms_and_dtypes():
    x, mask = batch()
    a = apply_noise(x, mask, "noise", torch.Generator().manual_seed(1))
    b = apply_noise(x, mask[:, 0], "noise", torch.Generator().manual_seed(1))  # [B, H, W]
    c = apply_noise(x, mask.to(torch.uint8), "noise", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(a, c)
    x64 = x.double()
    y64 = apply_noise(x64, mask, "noise_weak")
    assert y64.dtype == torch.float64
    assert torch.equal(y64[~mask.expand_as(x)], x64[~mask.expand_as(x)])


def test_errors():
    x, mask = batch()
    with pytest.raises(ValueError, match="pure_black.*mixture"):
        apply_noise(x, mask, "gaussian")
    with pytest.raises(ValueError, match="mask"):
        apply_noise(x, mask[:, :, :5], "noise")
    with pytest.raises(ValueError):
        apply_noise((x * 255).to(torch.uint8), mask, "noise")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stays_on_device():
    x, mask = batch()
    x, mask = x.cuda(), mask.cuda()
    for mode in NOISE_MODES:
        y = apply_noise(x, mask, mode, torch.Generator(device="cuda").manual_seed(0))
        assert y.is_cuda
        m = mask.expand_as(x)
        assert torch.equal(y[~m], x[~m])
