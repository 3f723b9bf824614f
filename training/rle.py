"""Label Studio brush RLE (the ``rle-pack`` bit format), vectorized with numpy.

Label Studio stores a brush mask as the RGBA pixels of an ``H x W`` canvas, flattened to ``H*W*4``
bytes and packed with thi.ng's ``rle-pack``.  The same codec lives, bit by bit in Python strings, in
``label_studio_sdk.converter.brush`` (``decode_rle`` / ``encode_rle`` / ``mask2rle``); this module is
a drop-in, bit-exact and much faster version of it.

Stream layout (bits, most significant first, packed into bytes)::

    header   num:32   word_size-1:5   rle_size[0..3]-1: 4 x 4          (53 bits)
    records  x:1  k:2  n:rle_size[k]  then
               x == 1 ("repeat"):  one word (word_size bits), written n+1 times
               x == 0 ("literal"): n+1 words, one per output value
    padding  zero bits up to a byte boundary (the SDK encoder adds a whole zero byte when the
             stream is already byte-aligned)

Decoding stops as soon as ``num`` values are written; trailing bits are ignored.  The mask is the
alpha channel (every 4th value, offset 3) ``> 0`` -- exactly what the SDK does with
``decode_rle(rle).reshape(H, W, 4)[:, :, 3]``.

How the decoder is vectorized: the only sequential part of ``rle-pack`` is "where does the next
record start".  For every bit position ``p`` of the stream we compute, in numpy, where a record
starting at ``p`` would end (``next[p]``, one 64-bit window read + shifts per position).  Following
``next`` from the first record is then a tight loop over record *headers* only (one indexed load per
record, no bit handling), after which the fields of the real records and the output runs are
expanded with vectorized numpy (``np.repeat``).  The bit-position table is built in chunks, so
memory stays bounded on huge streams.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

__all__ = ["RLEError", "decode_rle", "decode_rle_values", "encode_mask", "HEADER_BITS"]

HEADER_BITS = 32 + 5 + 4 * 4  # 53
_CHUNK_BITS = 1 << 21  # bit positions whose successor is computed at once (bounds memory)
_SDK_WORD_SIZE = 8
_SDK_RLE_SIZES = (3, 4, 8, 16)


class RLEError(ValueError):
    """A Label Studio brush RLE stream is malformed or does not match the declared image size."""


# --------------------------------------------------------------------------------------------------
# input handling and bit windows


def _as_bytes(rle: Sequence[int] | np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    """Validate the RLE container and return it as a uint8 array (no copy for bytes-like input)."""
    if isinstance(rle, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(rle), dtype=np.uint8)
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1:
            raise RLEError(f"RLE must be a flat sequence of bytes, got an array of shape {rle.shape}")
        if rle.dtype == np.uint8:
            return rle
        if rle.dtype.kind not in "iu":
            raise RLEError(f"RLE must hold integers 0..255, got an array of dtype {rle.dtype}")
        if rle.size and (int(rle.min()) < 0 or int(rle.max()) > 255):
            raise RLEError("RLE values must be bytes (0..255); found a value outside that range")
        return rle.astype(np.uint8)
    if isinstance(rle, (str, dict)) or not hasattr(rle, "__iter__"):
        raise RLEError(f"RLE must be a list of integers 0..255, got {type(rle).__name__}")
    try:
        return np.frombuffer(bytes(rle), dtype=np.uint8)  # C-speed; rejects floats, str, None, >255, <0
    except TypeError as exc:
        bad = next((v for v in rle if not isinstance(v, (int, np.integer))), None)
        raise RLEError(f"RLE must hold integers 0..255; found {bad!r} ({type(bad).__name__})") from exc
    except ValueError as exc:
        bad = next((v for v in rle if not 0 <= int(v) <= 255), None)
        raise RLEError(f"RLE values must be bytes (0..255); found {bad!r}") from exc


def _byte_windows(data: np.ndarray) -> np.ndarray:
    """``w[b]`` = the 8 bytes starting at byte ``b`` as a big-endian uint64 (zero-padded at the end)."""
    padded = np.zeros(data.size + 8, dtype=np.uint8)
    padded[: data.size] = data
    view = np.ndarray(shape=(data.size + 1,), dtype=">u8", buffer=padded, strides=(1,))
    return view.astype(np.uint64)


_U64 = np.uint64


def _window_at(w8: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """64 bits of the stream starting at each bit position ``pos`` (int64 array)."""
    return w8[pos >> 3] << (pos & 7).astype(_U64)


def _read_at(w8: np.ndarray, pos: np.ndarray, nbits: int) -> np.ndarray:
    """Unsigned ``nbits``-bit fields (1..57) starting at bit positions ``pos``."""
    return (_window_at(w8, pos) >> _U64(64 - nbits)).astype(np.int64)


def _header(data: np.ndarray) -> tuple[int, int, np.ndarray]:
    if data.size * 8 < HEADER_BITS:
        raise RLEError(f"RLE truncated: {data.size} bytes cannot hold the {HEADER_BITS}-bit header")
    h = int.from_bytes(data[:7].tobytes(), "big") >> (56 - HEADER_BITS)
    num = h >> 21
    word_size = ((h >> 16) & 31) + 1
    rle_sizes = np.array([((h >> s) & 15) + 1 for s in (12, 8, 4, 0)], dtype=np.int64)
    return num, word_size, rle_sizes


# --------------------------------------------------------------------------------------------------
# decoding


def _record_fields(w8: np.ndarray, pos: np.ndarray, word_size: int, rle_sizes: np.ndarray):
    """Fields of records starting at bit positions ``pos``: repeat flag, n, word position, length."""
    win = _window_at(w8, pos)
    x = (win >> _U64(63)).astype(bool)
    rsz = rle_sizes[((win >> _U64(61)) & _U64(3)).astype(np.intp)]
    n = ((win << _U64(3)) >> (64 - rsz).astype(_U64)).astype(np.int64)
    word_pos = pos + 3 + rsz
    length = 3 + rsz + np.where(x, word_size, (n + 1) * word_size)
    return x, n, word_pos, length


@functools.lru_cache(maxsize=8)
def _length_table(word_size: int, rle_sizes: tuple[int, ...]) -> np.ndarray:
    """Record length in bits indexed by the record's first 19 bits (x:1, k:2, n: up to 16)."""
    prefix = np.arange(1 << 19, dtype=np.int64)
    x = prefix >> 18
    k = (prefix >> 16) & 3
    rsz = np.asarray(rle_sizes, dtype=np.int64)[k]
    n = (prefix & 0xFFFF) >> (16 - rsz)
    return (3 + rsz + np.where(x == 1, word_size, (n + 1) * word_size)).astype(np.int64)


def _next_positions(w8: np.ndarray, lo: int, hi: int, table: np.ndarray) -> np.ndarray:
    """``next[p - lo]`` = bit position right after a record starting at ``p``, for lo <= p < hi."""
    b0, b1 = lo >> 3, (hi + 7) >> 3
    shifts = np.arange(8, dtype=_U64)
    prefix = (w8[b0:b1, None] << shifts) >> _U64(64 - 19)  # (bytes, 8 bit offsets)
    base = (np.arange(b0, b1, dtype=np.int64) * 8)[:, None] + np.arange(8, dtype=np.int64)
    nxt = (base + table[prefix.astype(np.intp)]).ravel()
    return nxt[lo - 8 * b0 : hi - 8 * b0]


def _walk_records(w8: np.ndarray, total_bits: int, word_size: int, rle_sizes: np.ndarray, num: int) -> np.ndarray:
    """Bit positions of the records that produce the ``num`` output values, in stream order.

    ``next[p]`` is computed for a chunk of bit positions at once (numpy, a table lookup on the
    first 19 bits at every position); the chain is then followed with one indexed load per record
    header -- the only Python-level loop.  Raises RLEError if the stream ends before ``num``
    values or the record that completes them does not fit in the stream.
    """
    table = _length_table(word_size, tuple(int(r) for r in rle_sizes))
    parts: list[np.ndarray] = []
    p = HEADER_BITS
    produced = 0
    while True:
        if p >= total_bits:
            raise RLEError(f"RLE truncated: the stream ends after {produced} of the {num} declared values")
        lo, hi = p, min(p + _CHUNK_BITS, total_bits)
        nxt = memoryview(_next_positions(w8, lo, hi, table))  # indexing gives a Python int, fast
        chunk: list[int] = []
        append = chunk.append
        while p < hi:  # every record is at least 5 bits long, so this always terminates
            append(p)
            p = nxt[p - lo]
        starts = np.asarray(chunk, dtype=np.int64)
        _, n, _, length = _record_fields(w8, starts, word_size, rle_sizes)
        done = np.cumsum(n + 1)
        done += produced
        last = int(np.searchsorted(done, num))  # first record that reaches num values
        if last < starts.size:
            parts.append(starts[: last + 1])
            if starts[last] + length[last] > total_bits:
                raise RLEError(
                    f"RLE truncated: the last record runs past the end of the {total_bits // 8}-byte stream"
                )
            return np.concatenate(parts)
        parts.append(starts)
        produced = int(done[-1])


def _decode(data: np.ndarray, alpha_only: bool) -> tuple[int, np.ndarray]:
    num, word_size, rle_sizes = _header(data)
    total_bits = data.size * 8
    if num == 0:
        return 0, np.zeros(0, dtype=np.uint8)
    w8 = _byte_windows(data)
    starts = _walk_records(w8, total_bits, word_size, rle_sizes, num)
    x, n, word_pos, _ = _record_fields(w8, starts, word_size, rle_sizes)
    lengths = n + 1
    out_start = np.zeros(starts.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=out_start[1:])
    out_end = out_start + lengths
    literal = ~x
    if literal.any() and out_end[literal].max() > num:
        # the SDK raises IndexError here; the JS decoder silently drops the extra values
        raise RLEError(f"RLE literal run writes past the declared length of {num} values")
    out_end = np.minimum(out_end, num)  # a repeat may overshoot: both reference decoders clamp it

    # repeat records: one word each
    rep_vals = np.zeros(starts.size, dtype=np.int64)
    if x.any():
        rep_vals[x] = _read_at(w8, word_pos[x], word_size)
    if word_size > 8:  # values must fit the SDK's uint8 output
        if rep_vals.max(initial=0) > 255:
            raise RLEError("RLE value does not fit a byte (word size > 8 with a value > 255)")
        if literal.any():
            lit_words = _expand_literal(word_pos[literal], out_start[literal], out_start[literal],
                                        out_end[literal], 1, word_size)[1]
            if _read_at(w8, lit_words, word_size).max(initial=0) > 255:
                raise RLEError("RLE value does not fit a byte (word size > 8 with a value > 255)")

    stride, offset = (4, 3) if alpha_only else (1, 0)
    # output element e (e = stride*k + offset) of [start, end) <-> k in [ceil((start-offset)/stride), ...)
    k_lo = (out_start - offset + stride - 1) // stride
    k_hi = (out_end - offset + stride - 1) // stride
    counts = np.maximum(k_hi - k_lo, 0)
    n_out = (num - offset + stride - 1) // stride
    out = np.repeat(rep_vals.astype(np.uint8), counts)
    if out.size != n_out:  # defensive: the runs must tile the output exactly
        raise RLEError("RLE stream is corrupt (runs do not tile the declared length)")
    if literal.any():
        ks, bitpos = _expand_literal(word_pos[literal], out_start[literal], k_lo[literal],
                                     k_hi[literal], stride, word_size, offset)
        if ks.size:
            out[ks] = _read_at(w8, bitpos, word_size).astype(np.uint8)
    return num, out


def _expand_literal(word_pos, out_start, k_lo, k_hi, stride, word_size, offset=0):
    """For literal records, every selected output index ``k`` and the bit position of its word."""
    counts = np.maximum(k_hi - k_lo, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rec = np.repeat(np.arange(counts.size), counts)
    first = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    ks = np.arange(total, dtype=np.int64) - first[rec] + k_lo[rec]
    elem = ks * stride + offset
    bitpos = word_pos[rec] + (elem - out_start[rec]) * word_size
    return ks, bitpos


def decode_rle_values(rle: Sequence[int] | np.ndarray | bytes) -> np.ndarray:
    """All decoded values as a flat uint8 array, identical to the SDK's ``decode_rle(rle)``."""
    _, out = _decode(_as_bytes(rle), alpha_only=False)
    return out


def decode_rle(rle: Sequence[int] | np.ndarray | bytes, height: int, width: int) -> np.ndarray:
    """Decode a Label Studio brush RLE into a bool ``height x width`` mask (alpha channel > 0).

    Bit-for-bit the SDK's ``decode_rle(rle).reshape(height, width, 4)[:, :, 3] > 0``.

    Raises RLEError on anything malformed: non-integers, values outside 0..255, a truncated
    stream, a declared length different from ``height * width * 4``, negative sizes.
    """
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise RLEError(f"{name} must be an integer, got {v!r}")
        if v < 0:
            raise RLEError(f"{name} must be >= 0, got {v}")
    height, width = int(height), int(width)
    data = _as_bytes(rle)
    num, _, _ = _header(data)
    if num != height * width * 4:
        raise RLEError(
            f"RLE declares {num} values but a {height}x{width} RGBA mask needs {height * width * 4}"
            + (f" (that would be {num // 4} pixels)" if num % 4 == 0 else "")
        )
    _, alpha = _decode(data, alpha_only=True)
    return (alpha > 0).reshape(height, width)


# --------------------------------------------------------------------------------------------------
# encoding


def _encode_runs(values: np.ndarray, lengths: np.ndarray, num: int) -> list[int]:
    """SDK ``encode_rle`` (word size 8, rle sizes 3/4/8/16) of a flat array given as runs.

    Mirrors the SDK exactly: a run of 1 is a one-word literal; runs of 2..8, 9..16, 17..256 use
    the 3-, 4- and 8-bit length fields; longer runs use the 16-bit field, split into pieces of
    65536 with the remainder last; zero padding to a byte boundary, a whole zero byte if aligned.
    """
    values = values.astype(np.int64)
    lengths = lengths.astype(np.int64)
    kind = np.select([lengths <= 8, lengths <= 16, lengths <= 256], [0, 1, 2], 3)
    repeat = lengths > 1
    pieces = np.where(kind == 3, (lengths - 1) // 65536 + 1, 1)
    if (pieces > 1).any():
        run = np.repeat(np.arange(lengths.size), pieces)
        first = np.zeros(lengths.size, dtype=np.int64)
        np.cumsum(pieces[:-1], out=first[1:])
        k = np.arange(run.size) - first[run]
        lengths = np.where(k == pieces[run] - 1, lengths[run] - 65536 * k, 65536)
        values, kind, repeat = values[run], kind[run], repeat[run]
    rsz = np.asarray(_SDK_RLE_SIZES, dtype=np.int64)[kind]
    code = (repeat.astype(np.int64) << (10 + rsz)) | (kind << (8 + rsz)) | ((lengths - 1) << 8) | values
    nbits = 11 + rsz  # <= 27
    # each record left-aligned in a 32-bit big-endian slot; keep the first nbits bits of each slot
    slots = (code << (32 - nbits)).astype(">u4")
    bits = np.unpackbits(slots.view(np.uint8)).reshape(-1, 32)
    body = bits[np.arange(32) < nbits[:, None]]
    header = (num << 21) | ((_SDK_WORD_SIZE - 1) << 16)
    for s, r in zip((12, 8, 4, 0), _SDK_RLE_SIZES):
        header |= (r - 1) << s
    head_bits = np.unpackbits(np.frombuffer((header << 11).to_bytes(8, "big"), dtype=np.uint8))[:HEADER_BITS]
    total = HEADER_BITS + body.size
    pad = 8 - total % 8  # 1..8: the SDK always pads, a whole byte when already aligned
    stream = np.concatenate([head_bits, body, np.zeros(pad, dtype=np.uint8)])
    return np.packbits(stream).tolist()


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of the runs of a 1-D array."""
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.append(change, flat.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return flat[ends], lengths


def encode_mask(mask: np.ndarray) -> list[int]:
    """Encode an ``H x W`` mask as Label Studio brush RLE.

    ``mask`` is bool (True -> 255) or integers 0..255 (e.g. 0/255).  The result is byte-identical
    to the SDK's ``mask2rle(mask_uint8)`` (= ``encode_rle(np.repeat(mask.ravel(), 4))``): all four
    RGBA channels carry the mask value.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    if mask.dtype == bool:
        flat = mask.ravel().astype(np.uint8) * np.uint8(255)
    elif mask.dtype.kind in "iu":
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
            raise ValueError("mask values must be in 0..255")
        flat = mask.ravel().astype(np.uint8)
    else:
        raise ValueError(f"mask must be bool or integer, got dtype {mask.dtype}")
    num = flat.size * 4
    if num >= 1 << 32:
        raise ValueError(f"mask of {flat.size} pixels is too large for the 32-bit RLE length field")
    if flat.size == 0:
        return _encode_runs(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    values, lengths = _runs(flat)
    return _encode_runs(values, lengths * 4, num)
