"""training.counterfactual: donor fills of the painted pixels, the donor bank, and the paired step."""

from __future__ import annotations

import pytest
import torch

from training.counterfactual import (
    COUNTERFACTUAL_MODES,
    FILL_MODES,
    DonorBank,
    apply_counterfactual,
    bank_for,
    choose_donors,
)
from training.images import make_normalizer
from training.models import build_model
from training.noise import NOISE_MODES
from training.options import OptionsError, TrainOptions
from training.paired import paired_step

H = W = 12


def painted_batch(b=6, seed=0, classes=(0, 0, 1, 1, 2, 2)):
    """Byte-valued images with distinct constant colours per sample (a donor is identifiable by its
    value), masks over the left 8 columns, each donor mask a bit different from the others."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, H, W), generator=g).float().div(255)
    for i in range(b):
        x[i, :, :, :] = (10 + 37 * i) / 255  # sample i is constant 10 + 37 i
    m = torch.zeros(b, 1, H, W, dtype=torch.bool)
    m[:, :, :, :8] = True
    for i in range(b):
        m[i, :, i, :] = False  # row i of sample i is not painted
    y = torch.tensor(classes[:b])
    return x, m, y


def from_sample(out, x, i, j):
    """[H, W] bool: pixels of out[i] equal to sample j's (constant) pixel in all three channels."""
    return (out[i] == x[j]).all(0)


@pytest.mark.parametrize("mode", COUNTERFACTUAL_MODES)
def test_fills_exactly_the_mask(mode):
    x, m, y = painted_batch()
    out = apply_counterfactual(x, m, y, mode, torch.Generator().manual_seed(1), DonorBank(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    outside = ~m.expand_as(x)
    assert torch.equal(out[outside], x[outside])  # bit-identical outside the mask
    assert not torch.equal(out, x)
    # every filled value is a byte value k / 255 (donor pixels or byte noise)
    k = out[m.expand_as(x)] * 255
    assert torch.allclose(k, k.round(), atol=1e-4)


@pytest.mark.parametrize("mode", ("counterfactual", "counterfactual_any", "counterfactual_mixture"))
def test_donor_pixels_where_the_donor_covers_noise_elsewhere(mode):
    x, m, y = painted_batch()
    for seed in range(5):
        out = apply_counterfactual(x, m, y, mode, torch.Generator().manual_seed(seed), DonorBank(0))
        for i in range(len(y)):
            donors = [j for j in range(len(y)) if j != i and from_sample(out, x, i, j)[m[i, 0]].any()]
            assert len(donors) == 1, donors  # one donor, another painted sample, never itself
            d = donors[0]
            if mode != "counterfactual_any":
                assert int(y[d]) != int(y[i])  # another class is in the batch, so it is chosen
            both, only_mine = m[i, 0] & m[d, 0], m[i, 0] & ~m[d, 0]
            assert torch.equal(from_sample(out, x, i, d) & m[i, 0], both)  # exactly where the donor covers
            assert only_mine.any()
            noise = out[i][:, only_mine]
            assert noise.unique().numel() > 3  # per-pixel noise where the donor's mask does not cover


def test_same_seed_same_fill_and_choice_draws_are_uniform():
    x, m, y = painted_batch()
    for mode in COUNTERFACTUAL_MODES:
        a = apply_counterfactual(x, m, y, mode, torch.Generator().manual_seed(5), DonorBank(0))
        b = apply_counterfactual(x, m, y, mode, torch.Generator().manual_seed(5), DonorBank(0))
        c = apply_counterfactual(x, m, y, mode, torch.Generator().manual_seed(6), DonorBank(0))
        assert torch.equal(a, b) and not torch.equal(a, c)
    # another class: sample 0 (class 0) takes each of the four class-1/2 samples about equally often
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(400):
        donor, _ = choose_donors(y, y, 6, "counterfactual", g)
        counts[donor[0]] += 1
    assert counts[0] == 0 and counts[1] == 0 and counts[2:].min() > 60


def test_any_class_and_fallbacks():
    _, _, y = painted_batch()
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        donor, has = choose_donors(y, y, 6, "counterfactual_any", g)
        seen.add(int(donor[0]))
        assert bool(has.all())
    assert seen == {1, 2, 3, 4, 5}  # same class allowed, itself never
    # one class only: "counterfactual" falls back to any other painted image
    same = torch.zeros(4, dtype=torch.long)
    donor, has = choose_donors(same, same, 4, "counterfactual", g)
    assert bool(has.all()) and all(int(donor[i]) != i for i in range(4))
    # a single painted image and no bank: no donor, the fill is noise everywhere in the mask
    x, m, y = painted_batch(b=1)
    out = apply_counterfactual(x, m, y, "counterfactual", torch.Generator().manual_seed(0), DonorBank(0))
    assert out[0][:, m[0, 0]].unique().numel() > 3
    assert torch.equal(out[0][:, ~m[0, 0]], x[0][:, ~m[0, 0]])


def test_mix_is_half_counterfactual_half_noise():
    x, m, y = painted_batch()
    g = torch.Generator().manual_seed(0)
    donors = 0
    for _ in range(100):
        _, has = choose_donors(y, y, 6, "counterfactual_mix", g)
        donors += int(has.sum())
    assert 200 < donors < 400  # ~300 of 600
    out = apply_counterfactual(x, m, y, "counterfactual_mix", torch.Generator().manual_seed(2), DonorBank(0))
    outside = ~m.expand_as(x)
    assert torch.equal(out[outside], x[outside])


def test_mixture_fallback_only_where_the_donor_covers_too_little():
    x, m, y = painted_batch()
    # every donor covers all but one row of the mask: the same fill as counterfactual (same draws first)
    a = apply_counterfactual(x, m, y, "counterfactual_mixture", torch.Generator().manual_seed(4), DonorBank(0))
    b = apply_counterfactual(x, m, y, "counterfactual", torch.Generator().manual_seed(4), DonorBank(0))
    assert torch.equal(a, b)
    # corner patches: each class paints its own corner, so no donor of another class covers anything
    corner = torch.zeros_like(m)
    for i, c in enumerate(y.tolist()):
        corner[i, :, 4 * c:4 * c + 4, 4 * c:4 * c + 4] = True
    out = apply_counterfactual(x, corner, y, "counterfactual_mixture", torch.Generator().manual_seed(0), DonorBank(0))
    outside = ~corner.expand_as(x)
    assert torch.equal(out[outside], x[outside])
    for i in range(len(y)):
        assert not any(from_sample(out, x, i, j)[corner[i, 0]].any() for j in range(len(y)) if j != i)
    # painted images of one class only: no counterfactual (a same-class donor keeps the shortcut)
    one = torch.zeros_like(y)
    out = apply_counterfactual(x, m, one, "counterfactual_mixture", torch.Generator().manual_seed(0), DonorBank(0))
    for i in range(len(y)):
        assert not any(from_sample(out, x, i, j)[m[i, 0]].any() for j in range(len(y)) if j != i)
    # over many draws the fill takes the mixture's single-colour / striped modes, not only pixel noise
    flat = 0
    for seed in range(20):
        out = apply_counterfactual(x, corner, y, "counterfactual_mixture", torch.Generator().manual_seed(seed),
                                   DonorBank(0))
        flat += sum(int(out[i][:, corner[i, 0]].unique(dim=1).shape[1] <= 2) for i in range(len(y)))
    assert flat > 20  # random_pure, hstrips, vstrips, pure_black: one or two colours over the patch


def test_bank_gives_a_lone_painted_image_a_donor_of_another_class():
    bank = DonorBank(4)
    x, m, y = painted_batch()
    bank.push(x[2:5], m[2:5], y[2:5])  # classes 1, 1, 2
    assert len(bank) == 3
    lone, lone_m, lone_y = x[:1], m[:1], y[:1]  # class 0, alone in its batch
    out = apply_counterfactual(lone, lone_m, lone_y, "counterfactual", torch.Generator().manual_seed(0), bank)
    value = {round(float(v * 255)) for v in out[0, 0][lone_m[0, 0] & m[2, 0] & m[3, 0] & m[4, 0]]}
    assert len(value) == 1 and value.pop() in (10 + 37 * 2, 10 + 37 * 3, 10 + 37 * 4)
    assert len(bank) == 4  # the lone image was pushed; the ring buffer keeps the last 4
    bank.push(x, m, y)
    assert len(bank) == 4 and set(bank.targets.tolist()) == {1, 2}  # the last 4 of x: classes 1, 1, 2, 2
    other = DonorBank(4)
    other.push(torch.rand(2, 3, 5, 5), torch.ones(2, 1, 5, 5, dtype=torch.bool), torch.tensor([0, 1]))
    assert other.view(x) is None  # another image size is never a donor
    g = torch.Generator()
    assert bank_for(g) is bank_for(g) and bank_for(torch.Generator()) is not bank_for(g) and bank_for(None) is None


def test_options_accept_the_fill_modes():
    assert FILL_MODES[: len(NOISE_MODES)] == NOISE_MODES
    for mode in FILL_MODES:
        assert TrainOptions.resolve(env={"TRAIN_NOISE_MODE": mode}).noise_mode == mode
    # one default fill for jobs and code (the counterfactual one); Robustar's noise is the named preset's
    assert TrainOptions.resolve().noise_mode == "counterfactual_mixture" == TrainOptions().noise_mode
    assert TrainOptions.resolve(env={"TRAIN_NOISE_MODE": "noise"}).noise_mode == "noise"
    assert TrainOptions.preset("robustar").noise_mode == "noise"
    with pytest.raises(OptionsError, match="counterfactual"):
        TrainOptions.resolve(overrides={"noise_mode": "counterfactual_pink"})
    with pytest.raises(ValueError, match="unknown counterfactual mode"):
        x, m, y = painted_batch()
        apply_counterfactual(x, m, y, "noise")


@pytest.mark.parametrize("mode", COUNTERFACTUAL_MODES)
def test_paired_step_with_a_counterfactual_fill(mode):
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, m, y = painted_batch(b=6)
    m[4:] = False  # two unpainted samples
    seen = {}
    orig = model.forward

    def forward(inp):
        seen["rows"] = inp.shape[0]
        return orig(inp)

    model.forward = forward
    before = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    stats = paired_step(model, opt, make_normalizer((0.5,) * 3, (0.25,) * 3), x, m, y, 1.0, mode, g)
    assert seen["rows"] == 6 + 4  # one fused forward on the batch and its 4 painted twins
    assert stats["n_paired"] == 4 and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(bank_for(g)) == 4  # the job's bank (keyed on the generator) kept the painted samples
