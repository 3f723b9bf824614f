"""Label Studio brush RLE (the ``rle-pack`` bit format), vectorized with numpy.

One module of a little over 400 lines on purpose: the decoder and the encoder are the two halves of one
bit layout (described once, below) and are proved against each other and the SDK in one test file.

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
record start".  For every bit position ``p`` of the stream numpy computes where a record starting
at ``p`` would end (``next[p]``: the record length is a table lookup on the record's first 19 bits,
read from a 32-bit window per byte).  Following ``next`` from the first record is then a tight loop
over record *headers* only (one indexed load, ~30 ns per record, no bit handling); the fields of the
real records are read back vectorized and the output runs expanded with ``np.repeat`` (literal runs
by a vectorized gather).  ``next`` is built in chunks of bit positions, so memory stays bounded.

Errors: anything malformed raises ``RLEError`` (a ValueError) -- non-integers, values outside
0..255, a truncated stream or a last record that runs past its end, a declared length that is not
``H*W*4``, a literal run writing past it, a value wider than a byte.  A repeat run overshooting the
declared length is clamped, as both reference decoders (SDK and JS) do.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

__all__ = ["RLEError", "decode_rle", "decode_rle_values", "encode_mask", "HEADER_BITS"]

HEADER_BITS = 32 + 5 + 4 * 4  # 53
_CHUNK_BITS = 1 << 21  # bit positions whose successor is computed at once (bounds memory)
_SDK_WORD_SIZE = 8  # what the SDK encoder (and the LS frontend) write
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


_SHIFTS32 = np.arange(8, dtype=np.uint32)
_OFFSETS = np.arange(8, dtype=np.int64)


def _next_positions(data: np.ndarray, lo: int, hi: int, table: np.ndarray) -> np.ndarray:
    """``next[p - lo]`` = bit position right after a record starting at ``p``, for lo <= p < hi.

    The 19-bit record prefix at bit offset o (0..7) of byte b lies in the 4 bytes from b, so one
    big-endian uint32 window per byte, shifted by the 8 offsets, covers every bit position.
    """
    b0, b1 = lo >> 3, (hi + 7) >> 3
    chunk = np.zeros(b1 - b0 + 3, dtype=np.uint8)
    src = data[b0 : b1 + 3]
    chunk[: src.size] = src
    w4 = np.ndarray(shape=(b1 - b0,), dtype=">u4", buffer=chunk, strides=(1,)).astype(np.uint32)
    prefix = (w4[:, None] << _SHIFTS32) >> np.uint32(32 - 19)  # (bytes, 8 bit offsets)
    nxt = table[prefix]
    nxt += (np.arange(b0, b1, dtype=np.int64) * 8)[:, None] + _OFFSETS
    return nxt.ravel()[lo - 8 * b0 : hi - 8 * b0]


def _follow(nxt: np.ndarray, n: int) -> np.ndarray:
    """The chain 0, nxt[0], nxt[nxt[0]], ... of positions below ``n``.

    The one Python-level loop of the decoder: one indexed load per record header (~30 ns; a
    memoryview index yields a Python int without numpy scalar overhead).  Jump-table tricks
    (following ``nxt^16`` and filling in with gathers) measured slower than this.
    """
    step = memoryview(nxt)
    chain: list[int] = []
    append = chain.append
    q = 0
    while q < n:  # nxt[q] > q (every record is at least 5 bits long): always terminates
        append(q)
        q = step[q]
    return np.asarray(chain, dtype=np.int64)


def _walk_records(data, w8, word_size, rle_sizes, num):
    """The records that produce the ``num`` output values, in stream order.

    ``next[p]`` is computed for a chunk of bit positions at once (numpy, a table lookup on the
    first 19 bits at every position); the chain of record starts is then followed by ``_follow``,
    one indexed load per record header -- the only Python-level loop.  Returns
    ``(x, n, word_pos, out_end)`` per record: repeat flag, n = values - 1, bit position of its
    first word, cumulative output count after it.
    Raises RLEError if the stream ends before ``num`` values, or the record completing them does
    not fit in the stream.
    """
    total_bits = data.size * 8
    table = _length_table(word_size, tuple(int(r) for r in rle_sizes))
    parts: list[tuple[np.ndarray, ...]] = []
    p = HEADER_BITS
    produced = 0
    while True:
        if p >= total_bits:
            raise RLEError(f"RLE truncated: the stream ends after {produced} of the {num} declared values")
        lo, hi = p, min(p + _CHUNK_BITS, total_bits)
        nxt_abs = _next_positions(data, lo, hi, table)
        starts = _follow(nxt_abs - lo, hi - lo) + lo
        p = int(nxt_abs[starts[-1] - lo])  # where the next record (in the next chunk) starts
        x, n, word_pos, length = _record_fields(w8, starts, word_size, rle_sizes)
        done = np.cumsum(n + 1)
        done += produced
        last = int(np.searchsorted(done, num))  # first record that reaches num values
        if last < starts.size:
            cut = slice(0, last + 1)
            parts.append((x[cut], n[cut], word_pos[cut], done[cut]))
            if starts[last] + length[last] > total_bits:
                raise RLEError(
                    f"RLE truncated: the last record runs past the end of the {total_bits // 8}-byte stream"
                )
            if len(parts) == 1:
                return parts[0]
            return tuple(np.concatenate(cols) for cols in zip(*parts))
        parts.append((x, n, word_pos, done))
        produced = int(done[-1])


def _decode(data: np.ndarray, alpha_only: bool) -> tuple[int, np.ndarray]:
    num, word_size, rle_sizes = _header(data)
    if num == 0:
        return 0, np.zeros(0, dtype=np.uint8)
    w8 = _byte_windows(data)
    x, n, word_pos, out_end = _walk_records(data, w8, word_size, rle_sizes, num)
    out_start = out_end - (n + 1)
    literal = ~x
    any_literal = bool(literal.any())
    if any_literal and out_end[literal].max() > num:
        # the SDK raises IndexError here; the JS decoder silently drops the extra values
        raise RLEError(f"RLE literal run writes past the declared length of {num} values")
    out_end[-1] = min(int(out_end[-1]), num)  # a repeat may overshoot: both reference decoders clamp it

    # repeat records: one word each (literal records' entries stay 0 and are overwritten below)
    rep_vals = _read_at(w8, word_pos, word_size)
    if any_literal:
        rep_vals[literal] = 0
    if word_size > 8:  # values must fit the SDK's uint8 output
        if rep_vals.max(initial=0) > 255:
            raise RLEError("RLE value does not fit a byte (word size > 8 with a value > 255)")
        if any_literal:
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
    if any_literal:
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
    """Encode an ``H x W`` mask as Label Studio brush RLE (vectorized: runs via numpy, records
    packed with one ``np.unpackbits``/``np.packbits``).

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


_RESIZE_CHUNK_PIXELS = 1 << 20  # output pixels upscaled at once by encode_mask_resized (bounds memory)


def encode_mask_resized(mask: np.ndarray, width: int, height: int) -> list[int]:
    """Brush RLE of a bool ``h x w`` mask nearest-resized to ``height x width``, without building the
    full-size mask: rows are resized ~1 M pixels at a time and only their runs are kept (a prediction
    computed on a downscaled image, reported at the image's stored size as Label Studio requires).

    Byte-identical to ``encode_mask`` of the resized mask (source row/column ``floor((i + 0.5) * h /
    height)``), so it decodes to exactly ``width * height * 4`` values.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if width * height * 4 >= 1 << 32:
        raise ValueError(f"mask of {width}x{height} pixels is too large for the 32-bit RLE length field")
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    step = max(1, _RESIZE_CHUNK_PIXELS // max(1, width))
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for r0 in range(0, height, step):
        v, n = _runs(mask[rows[r0 : r0 + step]][:, cols].ravel())
        if values and values[-1][-1] == v[0]:  # a run that goes on across the chunk boundary
            lengths[-1][-1] += n[0]
            v, n = v[1:], n[1:]
        if v.size:
            values.append(v.copy())
            lengths.append(n.copy())
    if not values:
        return _encode_runs(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    vals = np.concatenate(values).astype(np.int64) * 255
    return _encode_runs(vals, np.concatenate(lengths) * 4, width * height * 4)
