"""The code file (.vqc): the indices of a set of images, and which model made them.

A raw file is an NPZ archive (a zip of .npy members) that `numpy.load(path,
allow_pickle=False)` reads; a compressed one holds the same kind of members in the compact
container (vqtool.codes.container), which spends far fewer bytes beside the stream than a zip
(it matters for a file of one photo). Compressed zips of earlier vqtools still read.
The members:

- `codes`: uint16 (N, h, w), h, w = image_size / downsample;
- `names`: unicode (N,), relative POSIX paths without extension ('cat/0001');
- `sizes`: int32 (N, 2), each image's (height, width) as encoded (after --size, before padding);
- `header`: 0-d unicode holding JSON {"format": "vqtool-codes", "version": 1, "checkpoint":
  <fingerprint>, "num_embeddings": K, "embedding_dim": D, "downsample": 4, "image_size": [H, W]}.

A compressed file (`vqtool encode --compress`) is version 2: the codes range-coded (see
entropy.py) in a `stream` member, names and sizes stored compactly:

- `header`: uint8, the UTF-8 bytes of the JSON (a quarter of the unicode array's size), with
  "version": 2 and, beside the keys above, "coding" ("unigram" | "exact" | "prior"),
  "prior" (the prior checkpoint's fingerprint, null for unigram), "images" (N), "words"
  (uint32 words in the stream) and "codes_sha256" (of the codes as uint16 little-endian
  (N, h, w)), which a decode must reproduce: a damaged stream, or a prior that computes other
  probabilities on another machine, is refused instead of decoded wrong; an "exact" file also
  has "coding_model" (the fingerprint of the prior's exact coding model, whose integer tables
  are the same on every machine: vqtool.models.exact_prior) and "chunk" (images per chunk);
  "prior" (the float prior's tables) is what vqtool wrote before: decoded where it was
  written;
- `stream`: uint32 (W,), constriction's range coder words;
- `chunks` (prior and exact only): uint32 (C,), the words of each chunk's stream, in order:
  prior coding codes every entropy.CHUNK images as a stream of their own (exact coding every
  "chunk" images, a header key), C = ceil(N / chunk);
- `names`: uint8, UTF-8 text, one line per name; a line `PREFIX<US>FIRST<US>COUNT` (US the
  control character 0x1f, never in a name) stands for COUNT names PREFIX + FIRST, FIRST + 1,
  ... written with at least as many digits as FIRST has (sample-00001 to -00064); a line
  `MIDDLE<US>FIRST<US>COUNT<US>HEADS<US>PICKS` stands for COUNT names whose heads (up to and
  including the last '/') vary, HEADS[PICKS[k]] + MIDDLE + (FIRST + k), HEADS the run's
  distinct heads joined by RS (0x1e), PICKS one character of PICKS a name (cat/test-00042);
- `sizes`: int32 (R, 3), runs of (count, height, width) in image order;
- `frequencies` (unigram only): uint32 (K,), each code's count in the file plus one.

Codes of S residual stages make versions 3 (raw: `codes` uint16 (N, S, h, w)) and 4
(compressed: the header adds "stages", `codes_sha256` is a list of S digests, one per prefix of
stages, unigram `frequencies` are (S, K), and every coding codes stage after stage, so that the
first stages decode alone).

Images whose padded sizes differ, each with its own grid, make versions 5 (raw) and 6
(compressed): the header has no "image_size" (each image's grid is its size in `sizes`, padded
to the factor, over the factor) and always "stages" (null for codes without a stage axis).
Version 5's `codes` is uint16 (T,): each image's codes, (h_i, w_i) or (S, h_i, w_i) in C order,
one image after another. Version 6 codes the same integers: unigram stage after stage over the
whole file (each stage the images' codes one after another, as one long row), the exact and
prior codings a group of images at a time, a group for each grid in order of its first image,
each group's images in file order coded in chunks of their own; `chunks` holds every group's
chunks, group after group. `codes_sha256` is of the same concatenation (the digest of version
2 or 4 for images of one grid). Images that share one grid are always written as versions 1
to 4, byte for byte as before versions 5 and 6 existed. docs/formats.md lists every member and
header key by version and coding; tests/test_formats_doc.py holds it to what this module
writes and reads.

Raw files store members, not deflated: reading then never allocates more than the file's size,
and deflate saves little on codes (near-uniform indices over K). Files are byte-reproducible:
the same codes give the same bytes (fixed zip timestamps). The reader also accepts deflated
members (np.savez_compressed) up to a 64:1 ratio, and checks everything before it returns: a
damaged or doctored file raises WorkError, never anything else.

An exact file whose grids include one of another size than its prior's (coded window by
window) has its tables adapted to each image's own codes (vqtool.codes.adaptive) and says so
with "adapt": 1 in its header; without the key (every file of the prior's own grids, and
every file of an earlier vqtool) nothing is adapted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import json
import math
import re
import string
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from vqtool.codes import adaptive, container, entropy
from vqtool.codes.entropy import CodingPrior, StreamError
from vqtool.codes.names import name_problem
from vqtool.errors import UsageError, VqtoolError, WorkError, counted, first_line, os_reason
from vqtool.events import Progress, progress_parts
from vqtool.files import check_output_file, save_or_fail
from vqtool.images.pixels import padded_size
from vqtool.images.read import MAX_IMAGE_PIXELS
from vqtool.models.config import DOWNSAMPLE, DOWNSAMPLES
from vqtool.models.exact_prior import ExactPrior

FORMAT = "vqtool-codes"
VERSION = 1
MEMBERS = ("header", "codes", "names", "sizes")  # written in this order
HEADER_KEYS = (
    "format", "version", "checkpoint", "num_embeddings", "embedding_dim", "downsample",
    "image_size",
)  # fmt: skip
COMPRESSED_VERSION = 2
COMPRESSED_MEMBERS = ("header", "stream", "names", "sizes")  # + "frequencies" or "chunks"
COMPRESSED_KEYS = HEADER_KEYS + ("coding", "prior", "images", "words", "codes_sha256")
STAGED_VERSION = 3  # raw, codes (N, S, h, w) of S residual stages
STAGED_COMPRESSED_VERSION = 4  # compressed, codes of S stages
MIXED_VERSION = 5  # raw, images of different grids: `codes` uint16 (T,), image after image
MIXED_COMPRESSED_VERSION = 6  # compressed, images of different grids
RAW_VERSIONS = (VERSION, STAGED_VERSION, MIXED_VERSION)
COMPRESSED_VERSIONS = (COMPRESSED_VERSION, STAGED_COMPRESSED_VERSION, MIXED_COMPRESSED_VERSION)
MIXED_VERSIONS = (MIXED_VERSION, MIXED_COMPRESSED_VERSION)
MAX_STAGES = 64
CODINGS = ("unigram", "exact", "prior")
EXACT_KEYS = ("coding_model", "chunk")  # the exact coding's own header keys
OPTIONAL_KEYS = ("adapt",)  # an exact header's, where its tables were adapted (adaptive.py)
PREDICTED = ("exact", "prior")  # codings whose stream is coded in chunks by a prior's tables
MAX_HEADER_BYTES = 1 << 16
MAX_COMPRESSED_CODES = 1 << 28  # what a compressed file may expand to (512 MiB of uint16)
MAX_CHUNK = 1 << 16  # images per chunk of a prior-coded stream, at most
RUN_MARK = "\x1f"  # a control character: never part of a stored name
MAX_DEFLATE_RATIO = 64
# What a compact container may inflate to beyond 64 times its size: a unigram file's frequency
# tables (S x K uint32, nearly all ones for a few images) deflate far past 64:1.
MAX_INFLATE_FLOOR = MAX_HEADER_BYTES + MAX_STAGES * 65536 * 4
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the zip epoch: timestamps would make equal files differ
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
ZIP_MAGIC = b"PK\x03\x04"  # what every zip archive, hence every code file, starts with
_DAMAGED = "the file is damaged or was changed; encode the images again"


# A file's codes: one array (N, h, w) or (N, S, h, w) when every image has the same grid; a
# tuple of N arrays, image i's (h_i, w_i) or (S, h_i, w_i), when the grids differ.
Codes = np.ndarray | tuple[np.ndarray, ...]


class CodeGroup(NamedTuple):
    """The images of a code file that share one grid."""

    grid: tuple[int, int]  # (h, w): codes per image, per stage
    indices: np.ndarray  # int64 (n,): the images' positions in the file, in file order
    codes: np.ndarray  # uint16 (n, h, w), or (n, S, h, w) with a stage axis


@dataclass(frozen=True, eq=False)
class CodeFile:
    """The contents of a .vqc file.

    Images of one grid (all that versions 1 to 4 hold) have their codes in one array;
    images whose padded sizes differ (versions 5 and 6) have a tuple of arrays, one an image,
    and no shared `image_size`. `groups()` gives the codes of each grid as one array either
    way, and `take` a file of some of the images.
    """

    codes: Codes  # uint16 (N, h, w); (N, S, h, w) with a stage axis; a tuple when grids differ
    names: tuple[str, ...]  # N
    sizes: np.ndarray  # int32 (N, 2): (height, width) of each image as encoded, before padding
    checkpoint: str  # fingerprint of the checkpoint whose model made the codes
    num_embeddings: int  # K: every code is < K
    embedding_dim: int  # D
    # (H, W) shared by every image after padding, multiples of `downsample`; None when the
    # images' padded sizes differ (codes a tuple)
    image_size: tuple[int, int] | None
    downsample: int = DOWNSAMPLE
    version: int = VERSION

    @property
    def mixed(self) -> bool:
        """Whether the images have grids of different sizes (codes a tuple, versions 5, 6)."""
        return isinstance(self.codes, tuple)

    @property
    def count(self) -> int:
        """N: the images held."""
        return len(self.codes)

    @property
    def stage_axis(self) -> bool:
        """Whether the codes have a stage axis (a run of residual stages)."""
        if isinstance(self.codes, tuple):
            return self.codes[0].ndim == 3
        return self.codes.ndim == 4

    @property
    def stages(self) -> int:
        """Residual stages stored: 1 for codes without a stage axis."""
        if not self.stage_axis:
            return 1
        if isinstance(self.codes, tuple):
            return int(self.codes[0].shape[0])
        return int(self.codes.shape[1])

    def staged(self) -> np.ndarray:
        """The codes with a stage axis, whatever the file's version: (N, S, h, w); images of
        one grid only (ValueError for a file of several: see `groups`)."""
        codes = self.one_grid()
        return codes if codes.ndim == 4 else codes[:, None]

    def one_grid(self) -> np.ndarray:
        """The codes as one array, for images of one grid; ValueError when grids differ."""
        if isinstance(self.codes, tuple):
            raise ValueError(
                f"the codes are of images of {len(self.groups())} grid sizes: take one grid at a "
                "time (CodeFile.groups())"
            )
        return self.codes

    def grids(self) -> np.ndarray:
        """int64 (N, 2): each image's grid (h, w), its size padded to the factor over it."""
        return grids_of(self.sizes, self.downsample)

    def groups(self) -> list[CodeGroup]:
        """The images grid by grid: a group per grid in the order of its first image, each
        group's images in file order (one group for images of one grid)."""
        if isinstance(self.codes, np.ndarray):
            grid = (int(self.codes.shape[-2]), int(self.codes.shape[-1]))
            return [CodeGroup(grid, np.arange(self.count, dtype=np.int64), self.codes)]
        return [
            CodeGroup(grid, indices, np.stack([self.codes[i] for i in indices.tolist()]))
            for grid, indices in grid_groups(self.grids())
        ]

    def take(self, indices: np.ndarray) -> CodeFile:
        """A file of the images at `indices` (int, in the order given): one array and an
        image_size when they share a grid."""
        sizes = np.ascontiguousarray(self.sizes[indices])
        names = tuple(self.names[i] for i in indices.tolist())
        if isinstance(self.codes, np.ndarray):
            codes: Codes = np.ascontiguousarray(self.codes[indices])
            image_size = self.image_size
        else:
            codes, image_size = join_codes(
                [self.codes[i] for i in indices.tolist()], sizes, self.downsample
            )
        return dataclasses.replace(
            self, codes=codes, names=names, sizes=sizes, image_size=image_size
        )

    def header(self) -> dict[str, Any]:
        stage_axis = self.stage_axis
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": STAGED_VERSION if stage_axis else self.version,
            "checkpoint": self.checkpoint,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "downsample": self.downsample,
        }
        if self.image_size is None:
            return header | {
                "version": MIXED_VERSION,
                "stages": self.stages if stage_axis else None,
            }
        header["image_size"] = list(self.image_size)
        if stage_axis:
            header["stages"] = self.stages
        return header


def grids_of(sizes: np.ndarray, factor: int) -> np.ndarray:
    """Image sizes (N, 2) -> their grids int64 (N, 2): each side padded up to a multiple of
    `factor`, over `factor`."""
    return -(-sizes.astype(np.int64) // factor)


def grid_groups(grids: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Grids (N, 2) -> (grid, the int64 indices of its images) for each distinct grid, in the
    order of its first image: the order in which versions 5 and 6 code groups."""
    distinct, first, inverse = np.unique(grids, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    return [
        ((int(distinct[g, 0]), int(distinct[g, 1])), np.flatnonzero(inverse == g))
        for g in np.argsort(first, kind="stable").tolist()
    ]


def join_codes(
    parts: Sequence[np.ndarray], sizes: np.ndarray, factor: int
) -> tuple[Codes, tuple[int, int] | None]:
    """Each image's codes (h_i, w_i) or (S, h_i, w_i), and their sizes (N, 2) -> a CodeFile's
    codes and image_size: one array and the padded size they share when every grid is the
    same, else the tuple and None."""
    if len({part.shape for part in parts}) == 1:
        height, width = (int(v) for v in sizes[0])
        return np.stack(parts), padded_size((height, width), factor)
    return tuple(np.ascontiguousarray(part) for part in parts), None


@dataclass(frozen=True)
class CodeBytes:
    """A code file held in memory, such as one read whole from standard input (`-`); `name`
    is what messages call it."""

    data: bytes
    name: str = "standard input"

    def __str__(self) -> str:
        return self.name


Source = Path | CodeBytes  # where a code file is read from


def _file_size(source: Source) -> int:
    return len(source.data) if isinstance(source, CodeBytes) else source.stat().st_size


def _zip(source: Source) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(source.data) if isinstance(source, CodeBytes) else source)


def _source(path: Source | str) -> Source:
    return path if isinstance(path, CodeBytes) else Path(path)


def _first_bytes(source: Source, n: int) -> bytes:
    if isinstance(source, CodeBytes):
        return source.data[:n]
    with open(source, "rb") as f:
        return f.read(n)


def write_codes(
    path: Path,
    code_file: CodeFile,
    compress: bool = False,
    prior: CodingPrior | None = None,
    on_progress: Progress | None = None,
) -> None:
    """Write a code file atomically (temp file, fsync, rename); it is validated first.

    `compress` range-codes the codes with the file's own code frequencies, or with `prior`'s
    predictions when one is given (which implies compress; UsageError when it cannot code
    them); `on_progress(done, n)` counts the codes the prior has coded.
    """
    check_output(path)
    save_or_fail(path, _archive_writer(code_file, compress, prior, on_progress), "the code file")


def code_file_bytes(
    code_file: CodeFile,
    compress: bool = False,
    prior: CodingPrior | None = None,
    on_progress: Progress | None = None,
) -> bytes:
    """The bytes `write_codes` writes to a file, the same to the byte, for a stream such as
    standard output."""
    buffer = io.BytesIO()
    _archive_writer(code_file, compress, prior, on_progress)(buffer)
    return buffer.getvalue()


def _archive_writer(
    code_file: CodeFile,
    compress: bool,
    prior: CodingPrior | None,
    on_progress: Progress | None,
) -> Callable[[BinaryIO], None]:
    """Validate `code_file`, code it, and return what writes its archive to a seekable file."""
    try:
        _validate(code_file, Path("-"))
    except WorkError as exc:
        raise ValueError(f"invalid CodeFile: {exc.what}") from None
    if compress or prior is not None:
        arrays = _compressed_arrays(code_file, prior, on_progress)
    else:
        arrays = {
            "header": np.array(json.dumps(code_file.header())),
            "codes": _flat_codes(code_file.codes),
            "names": np.array(code_file.names, dtype=str).astype(
                f"<U{max(1, max(len(n) for n in code_file.names))}"
            ),
            "sizes": np.ascontiguousarray(code_file.sizes, dtype="<i4"),
        }
    compressed = "stream" in arrays
    members = {} if compressed else {key: _npy_bytes(array) for key, array in arrays.items()}

    def write(f: BinaryIO) -> None:
        if compressed:
            f.write(compact_bytes(arrays))
            return
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for key, data in members.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    member.write(data)

    return write


def compact_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed file's arrays in the compact container (vqtool.codes.container), the header
    first and the stream last (the container stores its last array undeflated)."""
    rest = {key: array for key, array in arrays.items() if key not in ("header", "stream")}
    return container.pack({"header": arrays["header"], **rest, "stream": arrays["stream"]})


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def _flat_codes(codes: Codes) -> np.ndarray:
    """The `codes` member of a raw file: the array itself, or for images of different grids
    (version 5) each image's codes in C order, one image after another, uint16 (T,)."""
    if isinstance(codes, np.ndarray):
        return np.ascontiguousarray(codes, dtype="<u2")
    return np.concatenate([part.reshape(-1) for part in codes]).astype("<u2")


def codes_sha256(codes: Codes) -> str:
    """The checksum a compressed file keeps of its codes: sha256 of uint16 little-endian, of
    each image's codes one after another (for one array, its bytes in C order)."""
    if isinstance(codes, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(codes, dtype="<u2").tobytes()).hexdigest()
    digest = hashlib.sha256()
    for part in codes:
        digest.update(np.ascontiguousarray(part, dtype="<u2").tobytes())
    return digest.hexdigest()


def _checksums(code_file: CodeFile) -> str | list[str]:
    """What a compressed file keeps: the codes' sha256, or with a stage axis one per prefix of
    stages (each image's first n stages, n = 1..S), so a decode of the first n stages is
    checked too."""
    codes = code_file.codes
    if not code_file.stage_axis:
        return codes_sha256(codes)
    if isinstance(codes, np.ndarray):
        return [codes_sha256(codes[:, :n]) for n in range(1, codes.shape[1] + 1)]
    return [codes_sha256(tuple(c[:n] for c in codes)) for n in range(1, code_file.stages + 1)]


def _compressed_arrays(
    code_file: CodeFile, prior: CodingPrior | None, on_progress: Progress | None
) -> dict[str, np.ndarray]:
    frequencies = None
    if prior is None:
        rows = _unigram_rows(code_file)
        frequencies = entropy.code_frequencies(rows, code_file.num_embeddings)
        encoded = entropy.encode_unigram(rows, frequencies)
        words, chunk_words = encoded.words, None
    else:
        words, chunk_words, chunk, adapted = _encode_groups(code_file, prior, on_progress)
    if code_file.mixed:
        version = MIXED_COMPRESSED_VERSION
    else:
        version = STAGED_COMPRESSED_VERSION if code_file.stage_axis else COMPRESSED_VERSION
    header = code_file.header() | {
        "version": version,
        "coding": "unigram" if prior is None else "exact",
        "prior": None if prior is None else prior.fingerprint,
        "images": len(code_file.names),
        "words": len(words),
        "codes_sha256": _checksums(code_file),
    }
    if prior is not None:
        header |= {"coding_model": prior.exact_fingerprint, "chunk": chunk}
        if adapted:  # absent otherwise: a file of the prior's own grids is what it always was
            header["adapt"] = adaptive.SCHEME
    arrays = {
        "header": np.frombuffer(json.dumps(header).encode(), np.uint8),
        "stream": np.ascontiguousarray(words, dtype="<u4"),
        "names": np.frombuffer(pack_names(code_file.names).encode(), np.uint8),
        "sizes": np.ascontiguousarray(size_runs(code_file.sizes), dtype="<i4"),
    }
    if frequencies is not None:
        arrays["frequencies"] = np.ascontiguousarray(frequencies, dtype="<u4")
    if chunk_words is not None:
        arrays["chunks"] = np.ascontiguousarray(chunk_words, dtype="<u4")
    return arrays


def _unigram_rows(code_file: CodeFile) -> np.ndarray:
    """The codes as the unigram coder takes them: the file's own array, or for images of
    different grids each stage's codes of every image one after another as one long row,
    (1, S, 1, T) with a stage axis, else (1, 1, T): the same symbols in the same order."""
    codes = code_file.codes
    if isinstance(codes, np.ndarray):
        return codes
    if not code_file.stage_axis:
        return np.concatenate([part.reshape(-1) for part in codes])[None, None]
    rows = [np.concatenate([part[s].reshape(-1) for part in codes]) for s in range(len(codes[0]))]
    return np.stack(rows)[None, :, None]


def _encode_groups(
    code_file: CodeFile, prior: CodingPrior, on_progress: Progress | None
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Words, chunk lengths, images per chunk of the exact coding, and whether a group's tables
    were adapted (vqtool.codes.adaptive: grids of another size than the prior's): each grid's
    images coded as a stream of chunks of their own (all of them when they share one grid),
    group after group."""
    groups = code_file.groups()
    for group in groups:  # every group refused or accepted before any is coded
        entropy.check_prior(
            prior, code_file.checkpoint, code_file.num_embeddings, group.grid, code_file.stages
        )
    if prior.exact is None:
        raise ValueError("the prior has no exact coding model to code with")
    chunk = entropy.exact_chunk(prior.exact, [(group.grid, len(group.codes)) for group in groups])
    words, chunk_words = [], []
    progress = progress_parts([group.codes.size for group in groups], on_progress)
    for group, callback in zip(groups, progress, strict=True):
        encoded = entropy.encode_with_prior(
            group.codes, prior.exact, callback, chunk_size=chunk, count_bits=False, adapt=True
        )
        assert encoded.chunk_words is not None  # prior coding always codes in chunks
        words.append(encoded.words)
        chunk_words.append(encoded.chunk_words)
    adapted = any(entropy.window_coded(prior.exact, group.grid) for group in groups)
    return np.concatenate(words), np.concatenate(chunk_words), chunk, adapted


_NUMBERED = re.compile(r"(.*?)([0-9]+)", re.DOTALL)
# A name as head (up to and including its last '/'), middle and trailing digits.
_HEADED = re.compile(r"(.*/)?([^/]*?)([0-9]+)", re.DOTALL)
HEAD_MARK = "\x1e"  # joins a run's heads: a control character, never part of a stored name
# A head-varying run's picks: one character a name, its head's index in the run's heads.
PICKS = string.digits + string.ascii_lowercase + string.ascii_uppercase
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # unicode category Cc


def pack_names(names: Sequence[str]) -> str:
    """Names as lines, each run of consecutively numbered names as one line (see above)."""
    lines = []
    i = 0
    while i < len(names):
        j, line = _headed_run(names, i)
        if j - i < 2:
            j, line = _prefix_run(names, i)
        lines.append(line if j - i >= 2 else names[i])
        i = j
    return "\n".join(lines)


def _prefix_run(names: Sequence[str], i: int) -> tuple[int, str]:
    """The end of the run of names PREFIX + consecutive numbers from names[i], and its line."""
    match = _NUMBERED.fullmatch(names[i])
    if match is None:
        return i + 1, names[i]
    prefix, digits = match.groups()
    first, width = int(digits), len(digits)
    j = i + 1
    while j < len(names) and names[j] == prefix + str(first + j - i).zfill(width):
        j += 1
    return j, f"{prefix}{RUN_MARK}{digits}{RUN_MARK}{j - i}"


def _headed_run(names: Sequence[str], i: int) -> tuple[int, str]:
    """The end of the run from names[i] of names HEAD + MIDDLE + consecutive numbers with
    more than one head, and its line; (i, '') when there is none (one head is _prefix_run's)."""
    match = _HEADED.fullmatch(names[i])
    if match is None:
        return i, ""
    _, middle, digits = match.groups()
    first, width = int(digits), len(digits)
    heads: dict[str, int] = {}  # in order of first appearance
    picks = []
    j = i
    while j < len(names):
        match = _HEADED.fullmatch(names[j])
        if match is None:
            break
        head = match.group(1) or ""
        if match.group(2) != middle or match.group(3) != str(first + j - i).zfill(width):
            break
        # The reader refuses control characters in a head: RS would split it.
        if head not in heads and (len(heads) == len(PICKS) or _CONTROL.search(head)):
            break
        picks.append(PICKS[heads.setdefault(head, len(heads))])
        j += 1
    if j - i < 2 or len(heads) < 2:
        return i, ""
    fields = (middle, digits, str(j - i), HEAD_MARK.join(heads), "".join(picks))
    return j, RUN_MARK.join(fields)


def unpack_names(text: str, limit: int) -> list[str]:
    """pack_names reversed; ValueError when the text is not such lines or holds more than
    `limit` names."""
    names: list[str] = []
    for line in text.split("\n"):
        fields = line.split(RUN_MARK)
        if len(fields) == 1:
            names.append(line)
        elif len(fields) in (3, 5):
            first, count = _run_numbers(fields[1], fields[2], line)
            if count > limit - len(names):
                raise ValueError("more names than images")
            numbers = [str(first + k).zfill(len(fields[1])) for k in range(count)]
            if len(fields) == 3:
                names.extend(fields[0] + number for number in numbers)
            else:
                heads = _run_heads(fields[3], fields[4], count)
                middle = fields[0]
                names.extend(heads[p] + middle + n for p, n in zip(fields[4], numbers, strict=True))
        else:
            raise ValueError(f"a run of names with {len(fields)} fields, not 3 or 5")
        if len(names) > limit:
            raise ValueError("more names than images")
    return names


def _run_numbers(digits: str, count_text: str, line: str) -> tuple[int, int]:
    """A run's first number and count, checked."""
    if not (re.fullmatch(r"[0-9]{1,18}", digits) and re.fullmatch(r"[0-9]{1,9}", count_text)):
        raise ValueError(f"a bad run of names {line[:60]!r}")
    return int(digits), int(count_text)


def _run_heads(heads_text: str, picks: str, count: int) -> dict[str, str]:
    """Each pick character of a head-varying run mapped to its head, checked."""
    heads = heads_text.split(HEAD_MARK)
    if len(heads) > len(PICKS):
        raise ValueError(f"a run of names with {len(heads)} heads, more than {len(PICKS)}")
    if any(_CONTROL.search(head) for head in heads):
        raise ValueError("a run of names with a control character in a head")
    if len(picks) != count:
        raise ValueError(f"a run of {count} names with {len(picks)} picks")
    by_pick = dict(zip(PICKS, heads, strict=False))
    if not set(picks) <= by_pick.keys():
        raise ValueError("a run of names picks a head it does not have")
    return by_pick


def size_runs(sizes: np.ndarray) -> np.ndarray:
    """Sizes (N, 2) -> runs (R, 3) of (count, height, width)."""
    change = np.ones(len(sizes), bool)
    change[1:] = (sizes[1:] != sizes[:-1]).any(1)
    starts = np.flatnonzero(change)
    counts = np.diff(np.append(starts, len(sizes)))
    return np.column_stack([counts, sizes[starts]]).astype(np.int32)


def check_output(path: Path) -> None:
    """Refuse an output path that cannot take a code file (call it before the work)."""
    check_output_file(Path(path), "the output", "-o codes.vqc")


def read_codes(
    path: Source,
    prior: CodingPrior | None = None,
    on_progress: Progress | None = None,
    stages: int | None = None,
) -> CodeFile:
    """Read and fully validate a code file, decoding a compressed one's stream; raises
    WorkError (damaged, doctored, unsupported version) or UsageError (missing file; a file
    compressed with a prior other than `prior`; more `stages` than it stores), never anything
    else. `on_progress(done, n)` follows the prior's images. `stages` keeps (and decodes) only
    the first stages of a file with a stage axis."""
    path = _source(path)
    arrays = _members(path)
    if "stream" in arrays:
        return _from_compressed(arrays, path, prior, on_progress, stages)
    return _first_stages(_from_arrays(arrays, path), stages, path)


def check_stages(
    stages: int | None, stored: int, where: object, holder: str = "the codes hold"
) -> None:
    """Refuse a stage count that is not 1..stored (UsageError, exit 2)."""
    if stages is not None and not 1 <= stages <= stored:
        raise UsageError(
            f"--stages {stages}, but {holder} {counted(stored, 'stage')}",
            where,
            f"give --stages from 1 to {stored}" if stored > 1 else "leave --stages out",
        )


def _first_stages(code_file: CodeFile, stages: int | None, path: Source) -> CodeFile:
    check_stages(stages, code_file.stages, path)
    if stages is None or not code_file.stage_axis or stages == code_file.stages:
        return code_file
    codes = code_file.codes
    if isinstance(codes, tuple):
        return dataclasses.replace(code_file, codes=tuple(c[:stages].copy() for c in codes))
    return dataclasses.replace(code_file, codes=np.ascontiguousarray(codes[:, :stages]))


def pick_images(
    code_file: CodeFile, first: int | None = None, pattern: str | None = None
) -> CodeFile:
    """The images whose names match the glob `pattern` (fnmatch, case-sensitive: `*` crosses
    '/', so 'cat/*' is a class), then the first `first` of those; UsageError (exit 2) for a
    pattern that matches nothing or a count that is not 1..what is there. Images picked from
    a file of several grids that share one come back as one array (CodeFile.take)."""
    n = len(code_file.names)
    kept = np.arange(n)
    if pattern is not None:
        kept = np.array(
            [i for i, name in enumerate(code_file.names) if fnmatch.fnmatchcase(name, pattern)],
            dtype=np.int64,
        )
        if kept.size == 0:
            shown = code_file.names[0] + (f" ... {code_file.names[-1]}" if n > 1 else "")
            raise UsageError(
                f"no image name matches {pattern!r} (the names: {shown[:120]})",
                "--names",
                "give a glob such as 'cat/*' or '*-0000?' (quote it from the shell)",
            )
    if first is not None:
        if not 1 <= first <= kept.size:
            of = f"{pattern!r} matches" if pattern is not None else "the file holds"
            raise UsageError(
                f"--first {first}, but {of} {counted(int(kept.size), 'image')}",
                "--first",
                f"give --first from 1 to {kept.size:,}",
            )
        kept = kept[:first]
    if kept.size == n:
        return code_file
    return code_file.take(kept)


@dataclass(frozen=True)
class CodeSummary:
    """What a code file says about itself, for `vqtool inspect`: read and checked like
    `read_codes` does, but a prior-coded stream is not decoded (that needs the prior)."""

    version: int
    coding: str  # "raw" (versions 1, 3, 5), "unigram", "exact" or "prior" (versions 2, 4, 6)
    checkpoint: str  # fingerprint of the VQ checkpoint whose model made the codes
    prior: str | None  # fingerprint of the prior that coded the stream ("prior" coding only)
    images: int  # N
    size_counts: tuple[tuple[int, int, int], ...]  # (height, width, images) per size, by first use
    image_size: tuple[int, int] | None  # (H, W) every image is padded to; None when they differ
    num_embeddings: int  # K
    embedding_dim: int  # D
    file_bytes: int
    payload_bytes: int  # the codes member of a raw file, the stream of a compressed one
    first_name: str
    last_name: str
    stream_checked: bool  # False for a prior-coded stream: decoding it with its prior checks it
    stages: int = 1  # residual stages stored (versions 3 and 4, 5 and 6 with a stage axis)
    coding_model: str | None = None  # fingerprint of the exact coding model ("exact" only)
    downsample: int = DOWNSAMPLE  # image sides per code grid side

    @property
    def grid(self) -> tuple[int, int] | None:
        """(h, w): codes per image, per stage; None when the images' grids differ."""
        if self.image_size is None:
            return None
        return self.image_size[0] // self.downsample, self.image_size[1] // self.downsample

    def grid_of(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): the codes of an image of `height` x `width` pixels, per stage."""
        return -(-height // self.downsample), -(-width // self.downsample)

    @property
    def codes_per_image(self) -> float:
        """Codes per image, per stage: h * w, or their mean when the images' grids differ."""
        total = sum(math.prod(self.grid_of(h, w)) * n for h, w, n in self.size_counts)
        return total / self.images

    @property
    def bits_per_image(self) -> float:
        """The whole file's bits, shared out over its images."""
        return self.file_bytes * 8 / self.images

    @property
    def payload_bits_per_image(self) -> float:
        return self.payload_bytes * 8 / self.images

    @property
    def uniform_bits_per_image(self) -> float:
        """S * h * w * log2 K (the mean over the images when their grids differ): every code
        coded as one of K equally likely ones."""
        return self.stages * self.codes_per_image * math.log2(self.num_embeddings)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data; sizes as named height and width, never a bare pair."""
        grid, padded = self.grid, self.image_size
        return {
            "format": FORMAT,
            "version": self.version,
            "coding": self.coding,
            "checkpoint": self.checkpoint,
            "prior": self.prior,
            "coding_model": self.coding_model,
            "images": self.images,
            "stages": self.stages,
            "sizes": [
                {
                    "height": h,
                    "width": w,
                    "images": count,
                    "codes_per_image": _hw(self.grid_of(h, w)),
                }
                for h, w, count in self.size_counts
            ],
            "padded_size": None if padded is None else _hw(padded),
            "codes_per_image": None if grid is None else _hw(grid),
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "file_bytes": self.file_bytes,
            "payload_bytes": self.payload_bytes,
            "bits_per_image": self.bits_per_image,
            "payload_bits_per_image": self.payload_bits_per_image,
            "uniform_bits_per_image": self.uniform_bits_per_image,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "stream_checked": self.stream_checked,
        }


def _hw(size: tuple[int, int]) -> dict[str, int]:
    return {"height": size[0], "width": size[1]}


def describe_codes(path: Source) -> CodeSummary:
    """A code file's summary, with the errors of `read_codes` for a damaged file: everything
    is checked, raw and unigram codes decoded, but a prior-coded stream is not (without its
    prior it cannot be; `read_codes` with the prior checks it against the codes' checksum)."""
    path = _source(path)
    arrays = _members(path)
    stream = arrays.get("stream")
    if stream is None or "frequencies" in arrays:  # raw or unigram: read as decode reads it
        if stream is None:
            code_file = _from_arrays(arrays, path)
        else:
            code_file = _from_compressed(arrays, path, None, None)
        names, sizes, checked = list(code_file.names), code_file.sizes, True
    else:
        layout = _compressed_layout(_checked_header(arrays, path), arrays, path)
        names, sizes, checked = layout.names, layout.sizes, False
    header = _header(arrays["header"], path)
    image_size = None if header["version"] in MIXED_VERSIONS else header["image_size"]
    counts: dict[tuple[int, int], int] = {}
    for height, width in sizes.tolist():
        counts[(height, width)] = counts.get((height, width), 0) + 1
    coding = header.get("coding", "raw")
    return CodeSummary(
        version=header["version"],
        coding=coding,
        checkpoint=header["checkpoint"],
        prior=header.get("prior"),
        images=len(names),
        size_counts=tuple((h, w, count) for (h, w), count in counts.items()),
        image_size=None if image_size is None else (image_size[0], image_size[1]),
        num_embeddings=header["num_embeddings"],
        embedding_dim=header["embedding_dim"],
        file_bytes=_file_size(path),
        payload_bytes=int((stream if stream is not None else arrays["codes"]).nbytes),
        first_name=names[0],
        last_name=names[-1],
        stream_checked=checked,
        stages=int(header.get("stages") or 1),
        coding_model=header.get("coding_model"),
        downsample=header["downsample"],
    )


def prior_fingerprint(path: Source) -> str | None:
    """The fingerprint of the prior a code file was compressed with, from its header alone;
    None for a raw or unigram file, and for one whose header cannot be read (`read_codes`
    then says why)."""
    path = _source(path)
    try:
        header = _header(_header_array(path), path)
    except Exception:  # whatever is wrong, read_codes finds and reports it
        return None
    fingerprint = header.get("prior")
    if header.get("coding") not in PREDICTED or not isinstance(fingerprint, str):
        return None
    return fingerprint if _FINGERPRINT.fullmatch(fingerprint) else None


def _header_array(path: Source) -> np.ndarray:
    """The header member alone, from either container."""
    head = _first_bytes(path, MAX_HEADER_BYTES + 4096)  # deflate never expands text much
    if head.startswith(container.MAGIC):
        key, array = container.first_array(head, MAX_HEADER_BYTES)
        if key != "header":
            raise ValueError("the first array is not the header")
        return array
    with _zip(path) as archive:
        info = archive.getinfo("header.npy")
        _check_member(info, _file_size(path), path)
        return _parse_npy(archive.read(info), "header", path)


def _members(path: Source) -> dict[str, np.ndarray]:
    """The file's arrays, each member checked before it is read; UsageError for a missing
    file, WorkError for one that cannot be read as a code file."""
    if isinstance(path, Path) and not path.is_file():
        raise UsageError("no such code file", path, "give a .vqc file written by vqtool encode")
    try:
        return _read_members(path)
    except VqtoolError:
        raise
    except PermissionError as exc:
        raise WorkError(
            f"cannot read the code file: {os_reason(exc)}", path, "check its permissions"
        ) from exc
    except Exception as exc:  # zipfile and numpy raise many types on damaged input
        raise _unreadable(path, exc) from exc


def _unreadable(path: Source, exc: Exception) -> WorkError:
    """Why a file is not a readable code file, in a user's words: the zip and .npy readers'
    own messages ("File is not a zip file", "Bad magic number") speak of their internals."""
    try:
        head = _first_bytes(path, len(ZIP_MAGIC))
    except OSError:
        head = ZIP_MAGIC
    if not head:
        return WorkError("not a readable code file: it is empty", path, "encode the images again")
    if head != ZIP_MAGIC and head != container.MAGIC:
        return WorkError(
            "not a readable code file: it is not a vqtool code file",
            path,
            "give a .vqc file written by vqtool encode",
        )
    if "CRC" in str(exc):
        return _damaged("not a readable code file: it is damaged (a member fails its CRC)", path)
    return _damaged("not a readable code file: it is damaged or truncated", path)


def check_codes_for_model(
    code_file: CodeFile,
    fingerprint: str,
    num_embeddings: int,
    embedding_dim: int,
    where: object,
    downsample: int = DOWNSAMPLE,
) -> None:
    """Refuse a code file made by another checkpoint (UsageError, exit 2)."""
    if code_file.checkpoint != fingerprint:
        raise UsageError(
            f"the code file was made by another checkpoint ({code_file.checkpoint[:12]}..., "
            f"this one is {fingerprint[:12]}...)",
            where,
            "decode it with the checkpoint that encoded it",
        )
    if (code_file.num_embeddings, code_file.embedding_dim) != (num_embeddings, embedding_dim):
        raise WorkError(
            f"the header says K={code_file.num_embeddings}, D={code_file.embedding_dim} but its "
            f"checkpoint has K={num_embeddings}, D={embedding_dim}",
            where,
            _DAMAGED,
        )
    if code_file.downsample != downsample:
        raise WorkError(
            f"the header says downsample {code_file.downsample} but its checkpoint's model "
            f"downsamples by {downsample}",
            where,
            _DAMAGED,
        )


def _damaged(what: str, path: Source) -> WorkError:
    return WorkError(what, path, _DAMAGED)


_LAYOUTS = (
    MEMBERS,
    COMPRESSED_MEMBERS,  # an earlier vqtool's prior coding, refused by name later
    (*COMPRESSED_MEMBERS, "frequencies"),
    (*COMPRESSED_MEMBERS, "chunks"),
)


def _read_members(path: Source) -> dict[str, np.ndarray]:
    if _first_bytes(path, len(container.MAGIC)) == container.MAGIC:
        return _read_container(path)
    file_size = _file_size(path)
    with _zip(path) as archive:
        infos = archive.infolist()
        names = sorted(info.filename for info in infos)
        if names not in (sorted(f"{key}.npy" for key in keys) for keys in _LAYOUTS):
            raise _damaged(f"not a vqtool code file: it holds {names[:8]}", path)
        arrays = {}
        for info in infos:
            key = info.filename[: -len(".npy")]
            _check_member(info, file_size, path)
            arrays[key] = _parse_npy(archive.read(info), key, path)
    return arrays


def _read_container(path: Source) -> dict[str, np.ndarray]:
    """A compressed file in the compact container (vqtool.codes.container): its members, each
    checked like a zip's, in the order the writer puts them (the header first)."""
    data = path.data if isinstance(path, CodeBytes) else path.read_bytes()
    try:
        arrays = container.unpack(data, MAX_DEFLATE_RATIO * len(data) + MAX_INFLATE_FLOOR)
    except container.ContainerError as exc:
        raise _damaged(f"not a readable code file: {exc}", path) from None
    names = list(arrays)
    if names[:1] != ["header"] or sorted(names) not in (sorted(keys) for keys in _LAYOUTS[1:]):
        raise _damaged(f"not a vqtool code file: it holds {names[:8]}", path)
    if arrays["header"].nbytes > MAX_HEADER_BYTES:
        raise _damaged(f"its header holds {arrays['header'].nbytes:,} bytes", path)
    return arrays


def _check_member(info: zipfile.ZipInfo, file_size: int, path: Source) -> None:
    # Bound what reading may allocate before anything is read.
    if info.compress_size > file_size:
        raise _damaged(f"member {info.filename} is larger than the file", path)
    if info.compress_type == zipfile.ZIP_STORED:
        limit = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        limit = MAX_DEFLATE_RATIO * info.compress_size + 4096
    else:
        raise _damaged(f"member {info.filename} uses an unsupported compression", path)
    if info.filename == "header.npy":
        limit = min(limit, MAX_HEADER_BYTES)
    if info.file_size > limit:
        raise _damaged(f"member {info.filename} declares {info.file_size:,} bytes", path)


def _parse_npy(data: bytes, key: str, path: Source) -> np.ndarray:
    """One .npy member -> array, refusing object dtypes (pickles) and size mismatches."""
    buffer = io.BytesIO(data)
    version = np.lib.format.read_magic(buffer)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buffer)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buffer)
    else:
        raise _damaged(f"{key} uses .npy version {version}", path)
    if dtype.hasobject:
        raise _damaged(f"{key} holds Python objects (a pickle; refused, not run)", path)
    if any(d < 0 for d in shape):
        raise _damaged(f"{key} has a negative dimension", path)
    count = math.prod(shape)
    offset = buffer.tell()
    if count * dtype.itemsize != len(data) - offset:
        raise _damaged(f"{key} holds {len(data) - offset:,} bytes for shape {shape}", path)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    array = array.reshape(shape, order="F" if fortran else "C")
    # A writable, native-endian, C-ordered copy (np.ascontiguousarray would make 0-d into 1-d).
    return array.astype(dtype.newbyteorder("="), order="C", copy=True)


def _header(array: np.ndarray, path: Source) -> dict[str, Any]:
    utf8 = array.dtype == np.uint8 and array.ndim == 1  # a compressed file's
    if not utf8 and (array.dtype.kind != "U" or array.shape != ()):
        raise _damaged(f"header must be a 0-d unicode array, got {array.dtype} {array.shape}", path)
    try:
        header = json.loads(array.tobytes().decode() if utf8 else str(array[()]))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError included
        raise _damaged("the header is not JSON", path) from exc
    if not isinstance(header, dict):
        raise _damaged("the header is not a JSON object", path)
    if header.get("format") != FORMAT:
        raise WorkError(
            f"not a vqtool code file (format {str(header.get('format'))[:40]!r})",
            path,
            "give a .vqc file written by vqtool encode",
        )
    version = header.get("version")
    if version not in (*RAW_VERSIONS, *COMPRESSED_VERSIONS) or isinstance(version, bool):
        newest = max(*RAW_VERSIONS, *COMPRESSED_VERSIONS)
        raise WorkError(
            f"unsupported code file version {json.dumps(version)[:20]} (this vqtool reads 1 to "
            f"{newest})",
            path,
            "use the vqtool version that wrote it, or encode the images again",
        )
    keys = header_keys(version, header.get("coding"))
    coding = header.get("coding")
    if version in COMPRESSED_VERSIONS and isinstance(coding, str) and coding not in CODINGS:
        raise WorkError(
            f"unknown coding {str(header.get('coding'))[:20]!r} (this vqtool reads "
            f"{', '.join(CODINGS)})",
            path,
            "decode it with the vqtool version that wrote it",
        )
    if version in COMPRESSED_VERSIONS and coding == "exact" and "adapt" in header:
        keys = (*keys, *OPTIONAL_KEYS)
        if not _int(header["adapt"], adaptive.SCHEME, adaptive.SCHEME):
            raise WorkError(
                f"tables adapted by rule {json.dumps(header['adapt'])[:20]} (this vqtool knows "
                f"{adaptive.SCHEME})",
                path,
                "decode it with the vqtool version that wrote it",
            )
    if sorted(header) != sorted(keys):
        raise _damaged(f"the header's keys are {sorted(header)[:10]}", path)
    # versions 5 and 6 always name stages: null for codes without a stage axis
    no_axis = version in MIXED_VERSIONS and header["stages"] is None
    if "stages" in header and not (no_axis or _int(header["stages"], 1, MAX_STAGES)):
        raise _damaged(f"the header's stages is not an integer in 1..{MAX_STAGES}", path)
    if utf8 != (version in COMPRESSED_VERSIONS):
        raise _damaged(f"a version {version} header stored as {array.dtype}", path)
    return header


def header_keys(version: int, coding: Any = None) -> tuple[str, ...]:
    """The keys a header of `version` (and, compressed, `coding`) holds, no more and no fewer."""
    keys: tuple[str, ...] = HEADER_KEYS if version in RAW_VERSIONS else COMPRESSED_KEYS
    if version in (STAGED_VERSION, STAGED_COMPRESSED_VERSION, *MIXED_VERSIONS):
        keys = (*keys, "stages")
    if version in MIXED_VERSIONS:  # each image's grid is its own size's
        keys = tuple(key for key in keys if key != "image_size")
    if version in COMPRESSED_VERSIONS and coding == "exact":
        keys = (*keys, *EXACT_KEYS)
    return keys


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _from_arrays(arrays: dict[str, np.ndarray], path: Source) -> CodeFile:
    header = _checked_header(arrays, path)
    names, sizes = arrays["names"], arrays["sizes"]
    codes: Codes = arrays["codes"]
    image_size = None
    if header["version"] == MIXED_VERSION:
        codes = _split_codes(arrays["codes"], sizes, header, path)
    else:
        image_size = (header["image_size"][0], header["image_size"][1])
    code_file = CodeFile(
        codes=codes,
        names=tuple(str(n) for n in names.reshape(-1)) if names.dtype.kind == "U" else (),
        sizes=sizes,
        checkpoint=header["checkpoint"],
        num_embeddings=header["num_embeddings"],
        embedding_dim=header["embedding_dim"],
        image_size=image_size,
        downsample=header["downsample"],
        version=header["version"],
    )
    # a header without "stages" (version 1), or with null (version 5), means codes without a
    # stage axis: 0 stages to check
    _validate(code_file, path, names.dtype, names.ndim, header.get("stages") or 0)
    return code_file


def _split_codes(
    flat: np.ndarray, sizes: np.ndarray, header: dict[str, Any], path: Source
) -> tuple[np.ndarray, ...]:
    """A version 5 `codes` member (T,) -> each image's codes, by the grids of its `sizes`."""
    if flat.dtype != np.uint16 or flat.ndim != 1:
        raise _damaged(
            f"codes must be 1-d uint16 in version 5, got {flat.dtype} {flat.shape}", path
        )
    grids = _mixed_grids(sizes, header["downsample"], path)
    stages = header["stages"]
    per_stage = [(h, w) for h, w in grids.tolist()]
    shapes = per_stage if stages is None else [(stages, h, w) for h, w in per_stage]
    counts = np.array([math.prod(shape) for shape in shapes], np.int64)
    if int(counts.sum()) != flat.size:
        raise _damaged(
            f"the codes hold {flat.size:,} codes, the images' sizes call for {int(counts.sum()):,}",
            path,
        )
    parts = np.split(flat, np.cumsum(counts)[:-1])
    return tuple(part.reshape(shape) for part, shape in zip(parts, shapes, strict=True))


def _mixed_grids(sizes: np.ndarray, factor: int, path: Source) -> np.ndarray:
    """The grids (N, 2) of a version 5 or 6 file's image sizes (N, 2), each size checked:
    sides of at least 1, padded within MAX_IMAGE_PIXELS, more than one grid among them."""
    if sizes.dtype != np.int32 or sizes.ndim != 2 or sizes.shape[1:] != (2,) or not len(sizes):
        raise _damaged(f"sizes must be int32 (N, 2), got {sizes.dtype} {sizes.shape}", path)
    if int(sizes.min()) < 1:
        raise _damaged("an image size has a side of less than 1 pixel", path)
    grids = grids_of(sizes, factor)
    if int((grids.prod(1) * factor * factor).max()) > MAX_IMAGE_PIXELS:
        raise _damaged(f"an image size is larger than {MAX_IMAGE_PIXELS:,} pixels", path)
    if len(np.unique(grids, axis=0)) < 2:
        raise _damaged(
            "a file of images of different grids (version 5 or 6) whose images share one grid",
            path,
        )
    return grids


def _checked_header(arrays: dict[str, np.ndarray], path: Source) -> dict[str, Any]:
    """The header, its fields common to every version checked, its version matching the
    members (a stream or codes)."""
    header = _header(arrays["header"], path)
    if (header["version"] in COMPRESSED_VERSIONS) != ("stream" in arrays):
        raise _damaged(f"version {header['version']} with members {sorted(arrays)}", path)
    checkpoint = header["checkpoint"]
    if not (isinstance(checkpoint, str) and _FINGERPRINT.fullmatch(checkpoint)):
        raise _damaged("the header's checkpoint is not a sha256 fingerprint", path)
    if not _int(header["num_embeddings"], 2, 65536):
        raise _damaged("the header's num_embeddings is not an integer in 2..65536", path)
    if not _int(header["embedding_dim"], 1, 1 << 20):
        raise _damaged("the header's embedding_dim is not a positive integer", path)
    factor = header["downsample"]
    if factor not in DOWNSAMPLES or isinstance(factor, bool):
        raise _damaged("the header's downsample is not one of 2, 4, 8, 16", path)
    if header["version"] in MIXED_VERSIONS:
        return header
    image_size = header["image_size"]
    if not (
        isinstance(image_size, list)
        and len(image_size) == 2
        and all(_int(s, factor, MAX_IMAGE_PIXELS) and s % factor == 0 for s in image_size)
        and image_size[0] * image_size[1] <= MAX_IMAGE_PIXELS
    ):
        raise _damaged(f"the header's image_size is not [H, W] in multiples of {factor}", path)
    return header


class _Layout(NamedTuple):
    """What a compressed file's header and sizes say its stream holds."""

    names: list[str]
    sizes: np.ndarray  # int32 (N, 2)
    grids: np.ndarray  # int64 (N, 2)
    image_size: tuple[int, int] | None  # None for images of different grids (version 6)
    stored: int | None  # the header's stages: None without a stage axis


def _compressed_layout(
    header: dict[str, Any], arrays: dict[str, np.ndarray], path: Source
) -> _Layout:
    """A compressed file's names and sizes, checked against its header, and for the exact
    and prior codings its chunks against the groups of images its sizes make."""
    _check_compressed_header(header, arrays, path)
    n, factor, stored = header["images"], header["downsample"], header.get("stages")
    names = _unpacked_names(arrays["names"], n, path)
    image_size = None
    if header["version"] != MIXED_COMPRESSED_VERSION:
        image_size = (header["image_size"][0], header["image_size"][1])
    sizes = _unpacked_sizes(arrays["sizes"], n, image_size, path, factor)
    grids = grids_of(sizes, factor)
    if image_size is None:
        grids = _mixed_grids(sizes, factor, path)
        if int(grids.prod(1).sum()) * (stored or 1) > MAX_COMPRESSED_CODES:
            raise _damaged("the images' sizes call for more codes than a file can hold", path)
    if header["coding"] in PREDICTED:
        counts = [len(indices) for _, indices in grid_groups(grids)]
        _check_chunks(arrays["chunks"], counts, len(arrays["stream"]), path, _chunk_of(header))
    return _Layout(names, sizes, grids, image_size, stored)


def _chunk_of(header: dict[str, Any]) -> int:
    """Images per chunk: the exact coding's header says; the float prior's was CHUNK."""
    return int(header.get("chunk", entropy.CHUNK))


def _from_compressed(
    arrays: dict[str, np.ndarray],
    path: Source,
    prior: CodingPrior | None,
    on_progress: Progress | None,
    stages: int | None = None,
) -> CodeFile:
    """A version 2, 4 or 6 file: every count checked against the members, then the stream
    (its first `stages` stages) decoded and checked against the codes' checksum."""
    header = _checked_header(arrays, path)
    # Names and sizes before the stream: a prior's decode takes a while.
    layout = _compressed_layout(header, arrays, path)
    coding, k, stored = header["coding"], header["num_embeddings"], layout.stored
    check_stages(stages, 1 if stored is None else stored, path)
    try:
        if coding == "unigram":
            codes = _decode_unigram(arrays, layout, k, stages, path)
        else:
            model = _prior_for(header, prior, path, layout.grids)
            chunk = _chunk_of(header)
            largest = entropy.largest_chunk(model) if isinstance(model, ExactPrior) else chunk
            if chunk > largest:
                raise _damaged(
                    f"the header's chunk of {chunk} images is more than this prior's coding "
                    f"takes ({largest})",
                    path,
                )
            adapt = header.get("adapt") == adaptive.SCHEME
            codes = _decode_groups(arrays, layout, model, on_progress, stages, chunk, adapt)
    except StreamError as exc:
        raise _undecodable(coding, str(exc), path) from exc
    code_file = CodeFile(
        codes=codes,
        names=tuple(layout.names),
        sizes=layout.sizes,
        checkpoint=header["checkpoint"],
        num_embeddings=k,
        embedding_dim=header["embedding_dim"],
        image_size=layout.image_size,
        downsample=header["downsample"],
    )
    # every prefix decoded is checked: a full decode vouches for the digests a later
    # decode of fewer stages relies on
    digests = [header["codes_sha256"]] if stored is None else header["codes_sha256"]
    decoded = _checksums(code_file)
    if any(a != b for a, b in zip([decoded] if stored is None else decoded, digests, strict=False)):
        raise _undecodable(coding, "the decoded codes do not match the file's checksum", path)
    _validate(code_file, path)
    return code_file


def _decode_unigram(
    arrays: dict[str, np.ndarray], layout: _Layout, k: int, stages: int | None, path: Source
) -> Codes:
    """The codes of a unigram stream (their first `stages` stages)."""
    stored, grids = layout.stored, layout.grids
    if layout.image_size is None:  # every image's codes as one long row (_unigram_rows)
        row = int(grids.prod(1).sum())
        shape: tuple[int, ...] = (1, 1, row) if stored is None else (1, stored, 1, row)
    else:
        grid = (int(grids[0, 0]), int(grids[0, 1]))
        n = len(grids)
        shape = (n, *grid) if stored is None else (n, stored, *grid)
    frequencies = _checked_frequencies(arrays["frequencies"], k, math.prod(shape), path, stored)
    codes = entropy.decode_unigram(arrays["stream"], frequencies, shape, stages)
    if layout.image_size is not None:
        return codes
    rows = codes[0, 0] if stored is None else codes[0, :, 0]  # (T,) or (S', T)
    ends = np.cumsum(grids.prod(1))
    parts = np.split(rows, ends[:-1], axis=-1)
    return tuple(
        part.reshape(*part.shape[:-1], h, w).copy()
        for part, (h, w) in zip(parts, grids.tolist(), strict=True)
    )


def _decode_groups(
    arrays: dict[str, np.ndarray],
    layout: _Layout,
    model: Any,
    on_progress: Progress | None,
    stages: int | None,
    chunk: int,
    adapt: bool,
) -> Codes:
    """The codes of an exact or prior stream: each grid's images decoded from their own
    chunks, group after group (one group for images of one grid), window-coded grids' tables
    adapted when the header says so."""
    stream, chunk_words, stored = arrays["stream"], arrays["chunks"], layout.stored
    groups = grid_groups(layout.grids)
    sizes = [len(indices) for _, indices in groups]
    kept = (stored or 1) if stages is None else stages  # the stages decoded
    counts = [len(indices) * kept * grid[0] * grid[1] for grid, indices in groups]
    progress = progress_parts(counts, on_progress)  # in codes: moves within a large image
    parts: list[np.ndarray] = [np.empty(0, np.uint16)] * len(layout.grids)
    first_chunk, first_word = 0, 0
    decoded = []
    for (grid, indices), n, callback in zip(groups, sizes, progress, strict=True):
        count = -(-n // chunk)
        words = chunk_words[first_chunk : first_chunk + count]
        end = first_word + int(words.sum(dtype=np.uint64))
        shape = (n, *grid) if stored is None else (n, stored, *grid)
        codes = entropy.decode_with_prior(
            stream[first_word:end],
            words,
            model,
            shape,
            callback,
            stages=stages,
            chunk_size=chunk,
            adapt=adapt,
        )
        decoded.append(codes)
        for i, image in zip(indices.tolist(), codes, strict=True):
            parts[i] = image
        first_chunk, first_word = first_chunk + count, end
    if layout.image_size is not None:
        return decoded[0]
    return tuple(parts)


def _check_compressed_header(
    header: dict[str, Any], arrays: dict[str, np.ndarray], path: Source
) -> None:
    """The keys only a compressed header has, against the members."""
    coding, n, stored = header["coding"], header["images"], header.get("stages")
    if header["version"] in MIXED_VERSIONS:
        codes_per_image = 1  # the sizes tell; checked once they are read
    else:
        image_size, factor = header["image_size"], header["downsample"]
        codes_per_image = image_size[0] * image_size[1] // factor**2
    if coding not in CODINGS:
        raise _damaged(f"unknown coding {str(coding)[:20]!r}", path)
    if coding == "prior" and header["version"] in MIXED_VERSIONS:
        # the float prior's coding was retired before version 6 existed
        raise _damaged("a version 6 file coded with the float prior, which none is", path)
    if coding == "prior" and sorted(arrays) == sorted(COMPRESSED_MEMBERS):
        raise WorkError(
            "coded with an earlier vqtool's prior coding (one stream, no chunks), which this "
            "version does not decode",
            path,
            "decode it with the vqtool that wrote it, or encode the images again",
        )
    if ("frequencies" in arrays) != (coding == "unigram") or ("chunks" in arrays) != (
        coding in PREDICTED
    ):
        raise _damaged(f"coding {coding} with members {sorted(arrays)}", path)
    fingerprint = header["prior"]
    if coding in PREDICTED and not (
        isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint)
    ):
        raise _damaged("the header's prior is not a sha256 fingerprint", path)
    if coding == "exact":
        model = header["coding_model"]
        if not (isinstance(model, str) and _FINGERPRINT.fullmatch(model)):
            raise _damaged("the header's coding_model is not a sha256 fingerprint", path)
        if not _int(header["chunk"], 1, MAX_CHUNK):
            raise _damaged(f"the header's chunk is not an integer in 1..{MAX_CHUNK}", path)
    if coding == "unigram" and fingerprint is not None:
        raise _damaged("a unigram file names a prior", path)
    if not _int(n, 1, MAX_COMPRESSED_CODES // (codes_per_image * (stored or 1))):
        raise _damaged("the header's images is not a count the file can hold", path)
    digests = header["codes_sha256"]
    if stored is not None:
        if not (isinstance(digests, list) and len(digests) == stored):
            raise _damaged("the header's codes_sha256 is not one digest per stage", path)
    else:
        digests = [digests]
    if not all(isinstance(d, str) and _FINGERPRINT.fullmatch(d) for d in digests):
        raise _damaged("the header's codes_sha256 is not a sha256 digest", path)
    stream = arrays["stream"]
    if stream.dtype != np.uint32 or stream.ndim != 1:
        raise _damaged(f"stream must be 1-d uint32, got {stream.dtype} {stream.shape}", path)
    if not _int(header["words"], 0, 1 << 62) or header["words"] != len(stream):
        raise _damaged(
            f"the header says {str(header['words'])[:20]} words, the stream holds {len(stream)}",
            path,
        )


def _check_chunks(
    chunk_words: np.ndarray, counts: Sequence[int], words: int, path: Source, chunk: int
) -> None:
    """The chunk lengths of a prior-coded stream: uint32, one per `chunk` images of each group
    of `counts` images, each group's summing to its part of the stream and all to the
    stream's words (entropy.chunk_spans), before any decoding."""
    expected = sum(-(-n // chunk) for n in counts)
    n = sum(counts)
    if chunk_words.dtype != np.uint32 or chunk_words.shape != (expected,):
        raise _damaged(
            f"chunks must be uint32 ({expected},) for {n} images, got {chunk_words.dtype} "
            f"{chunk_words.shape}",
            path,
        )
    if len(counts) == 1:
        groups = [(chunk_words, words)]
    else:
        total = int(chunk_words.sum(dtype=np.uint64))
        if total != words:
            raise _damaged(f"the chunks add up to {total} words, the stream holds {words}", path)
        ends = np.cumsum([-(-n // chunk) for n in counts])[:-1].tolist()
        groups = [(part, int(part.sum(dtype=np.uint64))) for part in np.split(chunk_words, ends)]
    try:
        for (part, part_words), images in zip(groups, counts, strict=True):
            entropy.chunk_spans(part, images, part_words, chunk)
    except StreamError as exc:
        raise _damaged(str(exc), path) from exc


def _undecodable(coding: str, what: str, path: Source) -> WorkError:
    """A stream that does not give back the file's codes: damaged, or (with a prior) decoded
    where the prior's arithmetic differs from the encoder's."""
    if coding != "prior":  # unigram and exact tables are the same on every machine
        return _damaged(what, path)
    return WorkError(
        f"{what}: the stream is damaged, or this machine computes the prior's probabilities "
        "differently from the encoder's",
        path,
        "decode it where it was encoded (same CPU and torch build), or encode the images again",
    )


def _unpacked_names(array: np.ndarray, n: int, path: Source) -> list[str]:
    if array.dtype != np.uint8 or array.ndim != 1:
        raise _damaged(f"names must be 1-d uint8 (UTF-8), got {array.dtype} {array.shape}", path)
    try:
        names = unpack_names(array.tobytes().decode("utf-8"), n)
    except ValueError as exc:  # UnicodeDecodeError included
        raise _damaged(f"the names cannot be read: {first_line(exc, 80)}", path) from exc
    if len(names) != n:
        raise _damaged(f"{len(names)} names for {n} images", path)
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            raise _damaged(f"the file holds {problem}", path)
    return names


def _unpacked_sizes(
    runs: np.ndarray, n: int, image_size: tuple[int, int] | None, path: Source, factor: int
) -> np.ndarray:
    """Size runs (R, 3) -> sizes int32 (N, 2); each must pad to `image_size` when there is
    one (versions 2 and 4; version 6's are checked by _mixed_grids)."""
    if runs.dtype != np.int32 or runs.ndim != 2 or runs.shape[1] != 3 or len(runs) > n:
        raise _damaged(f"sizes must be int32 runs (R, 3), got {runs.dtype} {runs.shape}", path)
    counts = runs[:, 0].astype(np.int64)
    if (counts < 1).any() or int(counts.sum()) != n:
        raise _damaged(f"the size runs do not count {n} images", path)
    if image_size is not None:
        for _, height, width in runs.tolist():
            if min(height, width) < 1 or padded_size((height, width), factor) != image_size:
                raise _damaged(
                    f"size {height}x{width} (HxW) does not pad to the header's image_size", path
                )
    return np.repeat(runs[:, 1:], counts, axis=0)


def _checked_frequencies(
    frequencies: np.ndarray, k: int, codes: int, path: Source, stages: int | None = None
) -> np.ndarray:
    """The unigram tables: (K,), or one per stage (S, K) for a file with a stage axis."""
    shape = (k,) if stages is None else (stages, k)
    if frequencies.dtype != np.uint32 or frequencies.shape != shape:
        raise _damaged(
            f"frequencies must be uint32 {shape}, got {frequencies.dtype} {frequencies.shape}",
            path,
        )
    tables = math.prod(shape) // k
    if frequencies.min() < 1 or int(frequencies.astype(np.uint64).sum()) != codes + tables * k:
        raise _damaged(f"the frequencies do not count {codes:,} codes", path)
    return frequencies


def _prior_for(
    header: dict[str, Any], prior: CodingPrior | None, path: Source, grids: np.ndarray
) -> Any:
    """The model of `prior`, when it is the one the file was compressed with and codes the
    images' grids (else UsageError: exit 2)."""
    wanted = header["prior"]
    if prior is None:
        raise UsageError(
            f"the code file was compressed with a prior ({wanted[:12]}...)",
            path,
            "pass --prior P, the prior run it was compressed with",
        )
    if prior.fingerprint != wanted:
        raise UsageError(
            f"the code file was compressed with another prior ({wanted[:12]}..., this one is "
            f"{prior.fingerprint[:12]}...)",
            path,
            "pass the prior it was compressed with",
        )
    stages = header.get("stages") or 1
    for grid, _ in grid_groups(grids):
        entropy.check_prior(prior, header["checkpoint"], header["num_embeddings"], grid, stages)
    if header["coding"] == "prior":
        return prior.model
    wanted = header["coding_model"]
    if prior.exact is None or prior.exact_fingerprint != wanted:
        have = "none" if prior.exact_fingerprint is None else f"{prior.exact_fingerprint[:12]}..."
        raise UsageError(
            f"the code file was coded with the prior's exact coding model {wanted[:12]}..., "
            f"this prior run has {have}",
            path,
            "pass the prior run folder it was compressed with, with its coding-model.npz",
        )
    return prior.exact


def _validate(
    code_file: CodeFile,
    path: Source,
    names_dtype: np.dtype | None = None,
    names_ndim: int = 1,
    stages: int | None = None,
) -> None:
    """Arrays against the header: dtypes, shapes (`stages`: the header's; 0 for a header
    without a stage axis; None for a CodeFile made in memory, either kind), every index < K,
    sizes, names."""
    codes, sizes = code_file.codes, code_file.sizes
    factor = code_file.downsample
    if factor not in DOWNSAMPLES or isinstance(factor, bool):
        raise _damaged(f"downsample {str(factor)[:20]} is not one of 2, 4, 8, 16", path)
    if isinstance(codes, tuple):
        n = len(codes)
        _validate_parts(code_file, path, stages)
        largest = max((int(part.max()) for part in codes if part.size), default=0)
    else:
        n = codes.shape[0] if codes.ndim else 0
        _validate_array(code_file, path, stages)
        largest = int(codes.max()) if codes.size else 0
    if n == 0:
        raise _damaged("the file holds no images", path)
    if largest >= code_file.num_embeddings:
        raise _damaged(f"code {largest} is not below K={code_file.num_embeddings}", path)
    if (names_dtype is not None and names_dtype.kind != "U") or names_ndim != 1:
        raise _damaged(f"names must be a 1-d unicode array, got {names_dtype}", path)
    if len(code_file.names) != n:
        raise _damaged(f"{len(code_file.names)} names for {n} images", path)
    for name in code_file.names:
        problem = name_problem(name)
        if problem is not None:
            raise _damaged(f"the file holds {problem}", path)
    if sizes.dtype.kind != "i" or sizes.dtype.itemsize != 4 or sizes.shape != (n, 2):
        raise _damaged(f"sizes must be int32 ({n}, 2), got {sizes.dtype} {sizes.shape}", path)
    if code_file.image_size is None:
        if int(sizes.min()) < 1:
            raise _damaged("an image size has a side of less than 1 pixel", path)
        grids = grids_of(sizes, factor)
        for i, part in enumerate(codes):
            if part.shape[-2:] != tuple(grids[i]):
                raise _damaged(
                    f"image {i}'s codes are {part.shape[-2]}x{part.shape[-1]}, its size "
                    f"{sizes[i, 0]}x{sizes[i, 1]} (HxW) pads to {grids[i, 0]}x{grids[i, 1]} codes",
                    path,
                )
        return
    for row in np.unique(sizes, axis=0):
        size = (int(row[0]), int(row[1]))
        if min(size) < 1 or padded_size(size, factor) != code_file.image_size:
            raise _damaged(
                f"size {size[0]}x{size[1]} (HxW) does not pad to the header's "
                f"{code_file.image_size[0]}x{code_file.image_size[1]}",
                path,
            )


def _validate_array(code_file: CodeFile, path: Source, stages: int | None) -> None:
    """Codes of one grid: uint16 (N, h, w) or (N, S, h, w) of the image_size's grid."""
    codes = code_file.codes
    assert isinstance(codes, np.ndarray)
    if code_file.image_size is None:
        raise _damaged("codes in one array, but no image_size they share", path)
    factor = code_file.downsample
    h, w = code_file.image_size[0] // factor, code_file.image_size[1] // factor
    if codes.dtype.kind != "u" or codes.dtype.itemsize != 2:
        raise _damaged(f"codes must be uint16, got {codes.dtype}", path)
    if stages == 0:
        if codes.ndim != 3 or codes.shape[1:] != (h, w):
            raise _damaged(f"codes have shape {codes.shape}, expected (N, {h}, {w})", path)
    elif stages is not None:
        if codes.shape[1:] != (stages, h, w):
            raise _damaged(
                f"codes have shape {codes.shape}, expected (N, {stages}, {h}, {w})", path
            )
    elif codes.ndim == 4:
        if not (1 <= codes.shape[1] <= MAX_STAGES and codes.shape[2:] == (h, w)):
            raise _damaged(f"codes have shape {codes.shape}, expected (N, S, {h}, {w})", path)
    elif codes.ndim != 3 or codes.shape[1:] != (h, w):
        raise _damaged(f"codes have shape {codes.shape}, expected (N, {h}, {w})", path)


def _validate_parts(code_file: CodeFile, path: Source, stages: int | None) -> None:
    """Codes of images of different grids: a tuple of uint16 (h_i, w_i), or (S, h_i, w_i) with
    one S, more than one grid among them, and no image_size."""
    codes = code_file.codes
    assert isinstance(codes, tuple)
    if code_file.image_size is not None:
        raise _damaged("codes image by image, but an image_size every image shares", path)
    if not codes:
        raise _damaged("the file holds no images", path)
    first = codes[0]
    axis = first.ndim == 3 if stages is None else stages > 0
    for part in codes:
        if not isinstance(part, np.ndarray) or part.dtype.kind != "u" or part.dtype.itemsize != 2:
            raise _damaged(f"codes must be uint16 arrays, got {type(part).__name__}", path)
        expected = (3, first.shape[0]) if axis else (2, None)
        if part.ndim != expected[0] or (axis and part.shape[0] != expected[1]):
            what = f"(S, h, w) of S = {first.shape[0]}" if axis else "(h, w)"
            raise _damaged(f"an image's codes have shape {part.shape}, expected {what}", path)
    if axis and not 1 <= first.shape[0] <= MAX_STAGES:
        raise _damaged(f"codes of {first.shape[0]} stages, not 1..{MAX_STAGES}", path)
    if stages and first.shape[0] != stages:
        raise _damaged(f"codes of {first.shape[0]} stages, the header says {stages}", path)
    if len({part.shape for part in codes}) < 2:
        raise _damaged(
            "codes image by image, but every image has the same grid: give them as one array "
            "(vqc.join_codes)",
            path,
        )
