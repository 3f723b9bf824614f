"""label_config.rle against label_studio_sdk.converter.brush, on masks and on hand-packed rle-pack streams."""

from __future__ import annotations

import random

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from label_config import rle as rle_mod
from label_config.rle import RLEError, decode_rle, decode_rle_values, encode_mask

# a 6x8 mask and its RLE as captured from Label Studio 1.23.2 / the SDK (the recordings' rle_roundtrip.json)
FIXTURE_RLE = [0, 0, 0, 192, 57, 27, 254, 39, 0, 191, 255, 124, 2, 255, 253, 240, 11, 255, 249, 28, 0]
FIXTURE_MASK = np.zeros((6, 8), dtype=bool)
FIXTURE_MASK[1:4, 2:6] = True


def sdk_mask(rle, h, w) -> np.ndarray:
    return brush.decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 0


def sdk_encode(mask: np.ndarray) -> list[int]:
    return brush.mask2rle((mask.astype(np.uint8) * 255) if mask.dtype == bool else mask)


def blob(h: int, w: int, rng: np.random.Generator, k: int = 3) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    m = np.zeros((h, w), dtype=bool)
    for _ in range(k):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(1, max(2, min(h, w) // 2))
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return m


SHAPES = [(1, 1), (1, 7), (7, 1), (1, 64), (2, 3), (3, 5), (6, 8), (17, 31), (33, 1), (64, 65), (100, 3)]
KINDS = ["random", "sparse", "dense", "zeros", "ones", "blob", "rows"]


def make_mask(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random((h, w)) < 0.5
    if kind == "sparse":
        return rng.random((h, w)) < 0.03
    if kind == "dense":
        return rng.random((h, w)) < 0.97
    if kind == "zeros":
        return np.zeros((h, w), dtype=bool)
    if kind == "ones":
        return np.ones((h, w), dtype=bool)
    if kind == "rows":
        m = np.zeros((h, w), dtype=bool)
        m[h // 3 :, :] = True
        return m
    return blob(h, w, rng)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_sdk(shape, kind):
    h, w = shape
    mask = make_mask(kind, h, w, seed=h * 1000 + w)
    ref = sdk_encode(mask)
    assert encode_mask(mask) == ref
    assert encode_mask(mask.astype(np.uint8) * 255) == ref
    got = decode_rle(ref, h, w)
    assert got.dtype == bool and got.shape == (h, w)
    np.testing.assert_array_equal(got, sdk_mask(ref, h, w))
    np.testing.assert_array_equal(got, mask)
    np.testing.assert_array_equal(decode_rle_values(ref), brush.decode_rle(ref))


def test_many_random_masks_match_sdk():
    rng = np.random.default_rng(7)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        ref = sdk_encode(mask)
        assert encode_mask(mask) == ref
        np.testing.assert_array_equal(decode_rle(ref, h, w), sdk_mask(ref, h, w))


def test_protocol_fixture():
    np.testing.assert_array_equal(decode_rle(FIXTURE_RLE, 6, 8), FIXTURE_MASK)
    assert encode_mask(FIXTURE_MASK) == FIXTURE_RLE


def test_long_runs_split_like_sdk():
    # runs longer than 65536 values (16384 pixels) are split into several 16-bit records
    for h, w, cut in [(300, 300, 0), (300, 300, 100 * 300), (128, 512, 16384), (128, 512, 16385), (256, 257, 5)]:
        m = np.zeros((h, w), dtype=bool)
        m.ravel()[cut:] = True
        ref = sdk_encode(m)
        assert encode_mask(m) == ref
        np.testing.assert_array_equal(decode_rle(ref, h, w), m)


def test_grey_values_like_sdk_mask2rle():
    rng = np.random.default_rng(3)
    m = rng.integers(0, 256, (9, 11)).astype(np.uint8)
    m[2:5] = 128
    ref = brush.mask2rle(m)
    assert encode_mask(m) == ref
    np.testing.assert_array_equal(decode_rle_values(ref), brush.decode_rle(ref))
    np.testing.assert_array_equal(decode_rle(ref, 9, 11), m > 0)


def test_input_containers():
    for rle in (FIXTURE_RLE, tuple(FIXTURE_RLE), np.array(FIXTURE_RLE), np.array(FIXTURE_RLE, np.uint8),
                np.array(FIXTURE_RLE, np.int32), bytes(FIXTURE_RLE), bytearray(FIXTURE_RLE)):
        np.testing.assert_array_equal(decode_rle(rle, 6, 8), FIXTURE_MASK)
    np.testing.assert_array_equal(decode_rle(FIXTURE_RLE, np.int64(6), np.int64(8)), FIXTURE_MASK)


def test_large_roundtrip_many_chunks():
    # a ~1 MB stream, several times the decoder's chunk of bit positions
    rng = np.random.default_rng(0)
    m = rng.random((700, 900)) < 0.5
    rle = encode_mask(m)
    assert len(rle) * 8 > 2 * rle_mod._CHUNK_BITS
    np.testing.assert_array_equal(decode_rle(rle, 700, 900), m)


def test_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(rle_mod, "_CHUNK_BITS", 37)
    rng = np.random.default_rng(11)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.random()
        ref = sdk_encode(m)
        np.testing.assert_array_equal(decode_rle(ref, h, w), sdk_mask(ref, h, w))
    streams = _random_streams(60, seed=5)
    for rle, vals in streams:
        np.testing.assert_array_equal(decode_rle_values(rle), np.array(vals, dtype=np.uint8))


# ------------------------------------------------------------------ streams with literal runs


def pack(records, word_size=8, rle_sizes=(3, 4, 8, 16), num=None, tail=""):
    """A reference rle-pack packer (bit strings) that also writes literal runs, as the JS encoder does."""
    bits, vals = [], []
    for kind, k, payload in records:
        if kind == "rep":
            v, c = payload
            bits.append("1" + f"{k:02b}" + f"{c - 1:0{rle_sizes[k]}b}" + f"{v:0{word_size}b}")
            vals += [v] * c
        else:
            bits.append("0" + f"{k:02b}" + f"{len(payload) - 1:0{rle_sizes[k]}b}")
            bits.append("".join(f"{v:0{word_size}b}" for v in payload))
            vals += payload
    num = len(vals) if num is None else num
    s = f"{num:032b}" + f"{word_size - 1:05b}" + "".join(f"{r - 1:04b}" for r in rle_sizes) + "".join(bits) + tail
    s += "0" * (-len(s) % 8)
    return [int(s[i : i + 8], 2) for i in range(0, len(s), 8)], vals


def _random_streams(n, seed):
    rnd = random.Random(seed)
    out = []
    for t in range(n):
        ws = 8 if t % 3 == 0 else rnd.randint(1, 8)
        rs = (3, 4, 8, 16) if t % 2 == 0 else tuple(rnd.randint(1, 16) for _ in range(4))
        recs = []
        for _ in range(rnd.randint(1, 25)):
            k = rnd.randrange(4)
            top = min(1 << rs[k], 40)
            if rnd.random() < 0.5:
                recs.append(("rep", k, (rnd.randrange(1 << ws), rnd.randint(1, top))))
            else:
                recs.append(("lit", k, [rnd.randrange(1 << ws) for _ in range(rnd.randint(1, top))]))
        tail = "".join(rnd.choice("01") for _ in range(rnd.randint(0, 30)))  # ignored trailing bits
        out.append(pack(recs, ws, rs, tail=tail))
    return out


def test_literal_runs_and_other_word_sizes_match_sdk():
    for rle, vals in _random_streams(400, seed=1):
        ref = brush.decode_rle(rle)
        assert ref.tolist() == vals
        np.testing.assert_array_equal(decode_rle_values(rle), ref)
        if len(vals) % 4 == 0:
            n = len(vals) // 4
            np.testing.assert_array_equal(decode_rle(rle, 1, n), ref.reshape(1, n, 4)[:, :, 3] > 0)


def test_rgba_literal_mask_like_the_frontend():
    # the browser encodes RGBA canvas pixels: coloured label pixels give literal runs
    rng = np.random.default_rng(2)
    m = blob(13, 17, rng)
    rgba = np.zeros((13, 17, 4), dtype=np.uint8)
    rgba[m] = (255, 0, 128, 255)
    flat = rgba.ravel().tolist()
    recs = [("lit", 3, flat[i : i + 300]) for i in range(0, len(flat), 300)]
    rle, _ = pack(recs)
    np.testing.assert_array_equal(decode_rle(rle, 13, 17), m)
    np.testing.assert_array_equal(decode_rle(rle, 13, 17), sdk_mask(rle, 13, 17))


def test_wide_words():
    rle, vals = pack([("lit", 0, [1, 2, 255]), ("rep", 1, (7, 5))], word_size=12)
    assert decode_rle_values(rle).tolist() == vals
    bad, _ = pack([("lit", 0, [1, 2, 256]), ("rep", 1, (7, 5))], word_size=12)
    with pytest.raises(RLEError, match="byte"):
        decode_rle_values(bad)


def test_repeat_overshoot_is_clamped_like_sdk():
    rle, _ = pack([("rep", 2, (255, 10))], num=8)
    np.testing.assert_array_equal(decode_rle_values(rle), brush.decode_rle(rle))
    np.testing.assert_array_equal(decode_rle(rle, 1, 2), [[True, True]])


# ------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    "bad",
    [
        [0, 0, 0, 192, 57, 27, 254, 39.0],
        [0, 0, 0, 192, 57, 27, 254, "39"],
        [0, 0, 0, 192, 57, 27, 254, None],
        [0, 0, 0, 192, 57, 27, 254, 256],
        [0, 0, 0, 192, 57, 27, 254, -1],
        np.array([0, 0, 0, 192, 57, 27, 254, 39], dtype=float),
        np.array([0, 0, 0, 192, 57, 27, 254, 300]),
        np.zeros((2, 8), dtype=np.uint8),
        "0,0,0,192",
        None,
        12,
        {"rle": FIXTURE_RLE},
    ],
)
def test_bad_containers(bad):
    with pytest.raises(RLEError):
        decode_rle(bad, 6, 8)


def test_truncated_streams_raise():
    rng = np.random.default_rng(4)
    for _ in range(10):
        m = rng.random((9, 13)) < 0.5
        rle = encode_mask(m)
        for cut in range(len(rle) - 1):  # the last byte is padding
            with pytest.raises(RLEError):
                decode_rle(rle[:cut], 9, 13)
    with pytest.raises(RLEError, match="truncated"):
        decode_rle([], 6, 8)


def test_wrong_size_raises():
    with pytest.raises(RLEError, match="declares 192"):
        decode_rle(FIXTURE_RLE, 8, 6 + 1)
    with pytest.raises(RLEError):
        decode_rle(FIXTURE_RLE, 48, 1 + 1)
    with pytest.raises(RLEError, match=">= 0"):
        decode_rle(FIXTURE_RLE, -6, -8)
    with pytest.raises(RLEError, match="integer"):
        decode_rle(FIXTURE_RLE, 6.0, 8)
    # the same pixel count in another shape is not detectable from the stream: it decodes
    assert decode_rle(FIXTURE_RLE, 8, 6).shape == (8, 6)


def test_literal_overrun_raises():
    rle, _ = pack([("rep", 0, (0, 4)), ("lit", 1, [1, 2, 3, 4, 5, 6])], num=8)
    with pytest.raises(RLEError, match="literal"):
        decode_rle(rle, 1, 2)


def test_empty_mask():
    rle = encode_mask(np.zeros((0, 5), dtype=bool))
    assert decode_rle(rle, 0, 5).shape == (0, 5)


def test_fuzzed_streams_never_hang_or_misshape():
    rng = np.random.default_rng(9)
    outcomes = {"ok": 0, "error": 0}
    for t in range(600):
        h, w = (int(v) for v in rng.integers(1, 16, 2))
        rle = list(encode_mask(rng.random((h, w)) < rng.random()))
        op = t % 4
        if op == 0:
            rle = rle[: int(rng.integers(0, len(rle)))]
        elif op == 1:
            rle[int(rng.integers(0, len(rle)))] = int(rng.integers(0, 256))
        elif op == 2:
            i = int(rng.integers(7, len(rle)))
            rle[i] ^= 1 << int(rng.integers(0, 8))
        else:
            rle = rle[:7] + [int(v) for v in rng.integers(0, 256, int(rng.integers(0, 30)))]
        try:
            got = decode_rle(rle, h, w)
        except RLEError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        assert got.shape == (h, w) and got.dtype == bool
        try:
            ref = brush.decode_rle(rle)
        except Exception:  # noqa: BLE001 - the SDK fails in its own ways; ours must have raised too
            pytest.fail("decoded a stream the SDK rejects")
        np.testing.assert_array_equal(got, ref.reshape(h, w, 4)[:, :, 3] > 0)
    assert outcomes["ok"] > 50 and outcomes["error"] > 50
