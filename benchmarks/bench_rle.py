"""Label Studio brush RLE: label_config.rle against label_studio_sdk.converter.brush.

    python -m benchmarks.bench_rle            # 256^2, 1024^2, 4096^2 masks
    python -m benchmarks.bench_rle --quick    # seconds-long smoke run (256^2, 1024^2, fewer repeats)

Masks are brush-like blobs (a few overlapping discs, as an expert paints them), plus a 256^2
salt-and-pepper mask (50% random pixels, the worst case: one record per pixel run).  Every decode is
checked against the mask.  "decode" is RLE -> bool H x W mask (ours ``decode_rle``; the SDK's
``decode_rle(rle).reshape(H, W, 4)[:, :, 3] > 0``); "encode" is mask -> RLE (ours ``encode_mask``,
the SDK's ``mask2rle``; outputs are compared byte for byte).  When the Rust codec
``label-studio-brush-rle-rs`` is importable it gets a column too (it is not a dependency).
Times are the best of ``--repeats`` runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from label_studio_sdk.converter import brush

from label_config.rle import decode_rle, encode_mask

try:  # optional comparison only (pip install '.[bench]')
    import label_studio_brush_rle_rs as rle_rs

    RUST_MISSING = None
except ImportError as exc:  # pragma: no cover
    rle_rs = None
    RUST_MISSING = f"not installed: {exc}"


def blob_mask(n: int, seed: int = 0, k: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:n, :n]
    m = np.zeros((n, n), dtype=bool)
    for _ in range(k):
        cy, cx = rng.integers(0, n, 2)
        r = rng.integers(n // 20, n // 5)
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return m


CLOCK = time.perf_counter


def best_ms(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = CLOCK()
        out = fn()
        best = min(best, CLOCK() - t0)
    return best * 1e3, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller masks and fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time, steadier on a machine shared with other jobs")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    sizes = [256, 1024] if args.quick else [256, 1024, 4096]
    repeats = args.repeats or (2 if args.quick else 5)
    cases = [(f"blob {n}^2", blob_mask(n)) for n in sizes]
    cases.append(("random 256^2", np.random.default_rng(0).random((256, 256)) < 0.5))

    cols = ["ours", "sdk", "sdk/ours"] + (["rust", "rust/ours"] if rle_rs else [])
    head = f"{'mask':<14}{'RLE bytes':>10}  " + "".join(f"{c:>10}" for c in cols)
    for op in ("decode", "encode"):
        print(f"\n{op} (ms {args.clock} clock, best of {repeats}; sdk repeats capped at 2 for masks >= 1024^2)")
        print(head)
        for name, mask in cases:
            h, w = mask.shape
            u8 = mask.astype(np.uint8) * 255
            rle = encode_mask(mask)
            sdk_rep = min(repeats, 2) if h * w >= 1024 * 1024 else repeats
            if op == "decode":
                t_ours, got = best_ms(lambda: decode_rle(rle, h, w), repeats)
                t_sdk, ref = best_ms(lambda: brush.decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 0, sdk_rep)
                assert np.array_equal(got, mask) and np.array_equal(ref, mask)
                if rle_rs:
                    t_rs, rs = best_ms(lambda: np.asarray(rle_rs.decode_rle(rle, False)).reshape(h, w, 4)[:, :, 3] > 0,
                                       repeats)
                    assert np.array_equal(rs, mask)
            else:
                t_ours, got = best_ms(lambda: encode_mask(mask), repeats)
                t_sdk, ref = best_ms(lambda: brush.mask2rle(u8), sdk_rep)
                assert got == ref
                if rle_rs:
                    t_rs, rs = best_ms(lambda: rle_rs.encode_rle(np.repeat(u8.ravel(), 4), 8, [3, 4, 8, 16]), repeats)
                    assert list(rs) == ref
            vals = [f"{t_ours:.2f}", f"{t_sdk:.2f}", f"{t_sdk / t_ours:.1f}x"]
            if rle_rs:
                vals += [f"{t_rs:.2f}", f"{t_rs / t_ours:.2f}x"]
            print(f"{name:<14}{len(rle):>10}  " + "".join(f"{v:>10}" for v in vals))
    return 0


def time_codecs(mask: np.ndarray, repeats: int, sdk_repeats: int | None = None) -> dict:
    """Best-of-``repeats`` ms of decode (RLE -> bool mask) and encode (mask -> RLE) of ``mask``: ours,
    the SDK's and the Rust codec's (``None`` when not importable); every output is checked.

    Returns ``{"rle_bytes": n, "decode": {"ours", "sdk", "rust"}, "encode": {...}}``.
    """
    h, w = mask.shape
    u8 = mask.astype(np.uint8) * 255
    rle = encode_mask(mask)
    sdk_rep = sdk_repeats or (min(repeats, 2) if h * w >= 1024 * 1024 else repeats)
    out: dict = {"rle_bytes": len(rle), "decode": {"rust": None}, "encode": {"rust": None}}
    dec, enc = out["decode"], out["encode"]
    dec["ours"], got = best_ms(lambda: decode_rle(rle, h, w), repeats)
    dec["sdk"], ref = best_ms(lambda: brush.decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 0, sdk_rep)
    assert np.array_equal(got, mask) and np.array_equal(ref, mask)
    enc["ours"], got = best_ms(lambda: encode_mask(mask), repeats)
    enc["sdk"], ref = best_ms(lambda: brush.mask2rle(u8), sdk_rep)
    assert got == ref
    if rle_rs:
        dec["rust"], rs = best_ms(lambda: np.asarray(rle_rs.decode_rle(rle, False)).reshape(h, w, 4)[:, :, 3] > 0,
                                  repeats)
        assert np.array_equal(rs, mask)
        enc["rust"], rs = best_ms(lambda: rle_rs.encode_rle(np.repeat(u8.ravel(), 4), 8, [3, 4, 8, 16]), repeats)
        assert list(rs) == ref
    return out


if __name__ == "__main__":
    raise SystemExit(main())
