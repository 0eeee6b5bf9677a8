"""The compact container of compressed code files: their arrays, one after another, in one
raw-deflate stream behind a four-byte mark.

A zip spends a local and a central header on each member, and each .npy member a header of
its own, mostly spaces: weight enough beside the stream of a single photo's file
(docs/formats.md gives the bytes). Here an array's description takes a dozen bytes, and the deflate
stream starts from a preset dictionary (DICTIONARY: the header's keys and the members' names),
so that the JSON header costs little more than its hex digests. Raw code files stay zips
(NPZ): `numpy.load` reads their codes, where a compressed file's stream means nothing without
vqtool.

The layout, after MAGIC: the CRC-32 (four bytes, little-endian) of all that follows it (as a
zip's members have: names and sizes have no digest of their own), then raw deflate (RFC 1951,
with DICTIONARY as its preset dictionary) of, for each array in order: one byte n and n bytes
of ASCII name; one byte d and d bytes of dtype (one of DTYPES); one byte r, its number of
dimensions, and r four-byte little-endian sizes; then its elements in C order, except the last
array's: they are the bytes after the deflate stream's end, stored (a range coder's words do
not deflate, and in one deflate block with text they would cost more than their own size),
and nothing follows them.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Mapping

import numpy as np

MAGIC = b"\x89VQC"  # the high byte: no text file starts so, and 7-bit transfers break it visibly
DTYPES = ("|u1", "<u2", "<u4", "<i4")  # all a code file's arrays need; nothing else is read
# Changing a byte of it changes how every file inflates: a new container needs a new MAGIC.
DICTIONARY = (
    b'"header"|u1{"format": "vqtool-codes", "version": 4, "checkpoint": "", "num_embeddings": '
    b'512, "embedding_dim": 64, "downsample": 4, "image_size": [32, 32], "stages": null, '
    b'"coding": "exact", "unigram", "prior": "", "images": 1, "words": 1, "codes_sha256": ["", '
    b'"], "coding_model": "", "chunk": 256}stream<u4names|u1sizes<i4chunks<u4frequencies<u4'
)
_SIZE = struct.Struct("<I")
_NAME = re.compile(rb"[A-Za-z0-9_|<]{1,32}")  # what array names and DTYPES are made of
_START = len(MAGIC) + _SIZE.size  # where the deflate stream starts, after the CRC-32
_WBITS = -15  # raw deflate: the container has its own mark and no use for zlib's header


class ContainerError(ValueError):
    """A container that cannot be read: what is wrong, in a user's words."""


def pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    """MAGIC and the arrays deflated together, in the mapping's order; the same arrays give
    the same bytes."""
    parts = []
    for name, array in arrays.items():
        dtype = array.dtype.str
        if dtype not in DTYPES:
            raise ValueError(f"array {name} is {dtype}, not one of {DTYPES}")
        parts += [_text(name), _text(dtype), bytes([array.ndim])]
        parts += [_SIZE.pack(n) for n in array.shape]
        parts.append(np.ascontiguousarray(array).tobytes())
    stored = parts.pop()  # the last array's elements
    deflater = zlib.compressobj(9, zlib.DEFLATED, _WBITS, 9, zdict=DICTIONARY)
    payload = deflater.compress(b"".join(parts)) + deflater.flush() + stored
    return MAGIC + _SIZE.pack(zlib.crc32(payload)) + payload


def unpack(data: bytes, limit: int) -> dict[str, np.ndarray]:
    """The arrays of a container, in order, native-endian and writable; ContainerError when it
    is not one, is cut short, has bytes after its end, names an array twice, or would inflate
    past `limit` bytes (read no further than that: a small file cannot make the reader
    allocate gigabytes)."""
    if len(data) < _START or _SIZE.unpack_from(data, len(MAGIC))[0] != zlib.crc32(data[_START:]):
        raise ContainerError("it is damaged or truncated (its CRC-32 does not match)")
    inflater, body = _inflate(data, limit)
    if len(body) > limit:
        raise ContainerError(f"it inflates past {limit:,} bytes")
    if not inflater.eof:
        raise ContainerError("it is damaged or truncated (its deflate stream does not end)")
    body += inflater.unused_data  # the last array's stored elements
    arrays: dict[str, np.ndarray] = {}
    at = 0
    while at < len(body):
        name, array, at = _array_at(body, at)
        if name in arrays:
            raise ContainerError(f"it names array {name} twice")
        arrays[name] = array
    return arrays


def first_array(data: bytes, limit: int) -> tuple[str, np.ndarray]:
    """The first array alone (a header, read without inflating the stream behind it), when it
    is at most `limit` bytes; `data` may be the file's first bytes only."""
    _, body = _inflate(data, limit + 512)  # 512: more than a name, dtype and shape take
    name, array, _ = _array_at(body, 0)
    if array.nbytes > limit:
        raise ContainerError(f"its {name} holds {array.nbytes:,} bytes")
    return name, array


def _text(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes([len(raw)]) + raw


def _inflate(data: bytes, limit: int) -> tuple[zlib._Decompress, bytes]:
    if not data.startswith(MAGIC):
        raise ContainerError("it is not a vqtool code file")
    inflater = zlib.decompressobj(_WBITS, zdict=DICTIONARY)
    try:
        return inflater, inflater.decompress(data[_START:], limit + 1)
    except zlib.error as exc:
        raise ContainerError("it is damaged (its deflate stream does not inflate)") from exc


def _array_at(body: bytes, at: int) -> tuple[str, np.ndarray, int]:
    """(name, array, where the next one starts) of the array described at `at`."""
    name, at = _text_at(body, at)
    dtype, at = _text_at(body, at)
    if dtype not in DTYPES:
        raise ContainerError(f"its {name} is of type {dtype[:8]!r}, which no code file holds")
    if at >= len(body):
        raise ContainerError(f"it is damaged or truncated (the shape of its {name})")
    ndim = body[at]
    end = at + 1 + ndim * _SIZE.size
    if end > len(body):
        raise ContainerError(f"it is damaged or truncated (the shape of its {name})")
    shape = tuple(_SIZE.unpack_from(body, at + 1 + i * _SIZE.size)[0] for i in range(ndim))
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if end + size > len(body):
        raise ContainerError(f"it is damaged or truncated (its {name})")
    array = np.frombuffer(body, np.dtype(dtype), math.prod(shape), end).reshape(shape)
    return name, array.astype(np.dtype(dtype).newbyteorder("="), copy=True), end + size


def _text_at(body: bytes, at: int) -> tuple[str, int]:
    if at >= len(body):
        raise ContainerError("it is damaged or truncated (a name)")
    end = at + 1 + body[at]
    raw = body[at + 1 : end]
    if end > len(body) or not _NAME.fullmatch(raw):
        raise ContainerError("it is damaged or truncated (a name)")
    return raw.decode(), end
