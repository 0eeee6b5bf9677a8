"""The code file (.vqc): the indices of a set of images, and which model made them.

An NPZ archive (a zip of .npy members, stored without compression) that
`numpy.load(path, allow_pickle=False)` reads:

- `codes`: uint16 (N, h, w), h, w = image_size / 4;
- `names`: unicode (N,), relative POSIX paths without extension ('cat/0001');
- `sizes`: int32 (N, 2), each image's (height, width) as encoded (after --size, before padding);
- `header`: 0-d unicode holding JSON {"format": "vqtool-codes", "version": 1, "checkpoint":
  <fingerprint>, "num_embeddings": K, "embedding_dim": D, "downsample": 4, "image_size": [H, W]}.

Members are stored, not deflated: reading then never allocates more than the file's size, and
deflate saves little on codes (near-uniform indices over K). Files are byte-reproducible: the
same codes give the same bytes (fixed zip timestamps). The reader also accepts deflated members
(np.savez_compressed) up to a 64:1 ratio, and checks everything before it returns: a damaged
or doctored file raises WorkError, never anything else.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqtool.errors import UsageError, VqtoolError, WorkError, first_line
from vqtool.files import check_output_file, save_or_fail
from vqtool.imagefiles import MAX_IMAGE_PIXELS
from vqtool.model_config import DOWNSAMPLE
from vqtool.names import name_problem
from vqtool.pixels import padded_size

FORMAT = "vqtool-codes"
VERSION = 1
MEMBERS = ("header", "codes", "names", "sizes")  # written in this order
HEADER_KEYS = (
    "format", "version", "checkpoint", "num_embeddings", "embedding_dim", "downsample",
    "image_size",
)  # fmt: skip
MAX_HEADER_BYTES = 1 << 16
MAX_DEFLATE_RATIO = 64
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the zip epoch: timestamps would make equal files differ
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_DAMAGED = "the file is damaged or was changed; encode the images again"


@dataclass(frozen=True, eq=False)
class CodeFile:
    """The contents of a .vqc file."""

    codes: np.ndarray  # uint16 (N, h, w)
    names: tuple[str, ...]  # N
    sizes: np.ndarray  # int32 (N, 2): (height, width) of each image as encoded, before padding
    checkpoint: str  # fingerprint of the checkpoint whose model made the codes
    num_embeddings: int  # K: every code is < K
    embedding_dim: int  # D
    image_size: tuple[int, int]  # (H, W) shared by every image after padding; multiples of 4
    downsample: int = DOWNSAMPLE
    version: int = VERSION

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "checkpoint": self.checkpoint,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "downsample": self.downsample,
            "image_size": list(self.image_size),
        }


def write_codes(path: Path, code_file: CodeFile) -> None:
    """Write a code file atomically (temp file, fsync, rename); it is validated first."""

    try:
        _validate(code_file, path)
    except WorkError as exc:
        raise ValueError(f"invalid CodeFile: {exc.what}") from None
    arrays = {
        "header": np.array(json.dumps(code_file.header())),
        "codes": np.ascontiguousarray(code_file.codes, dtype="<u2"),
        "names": np.array(code_file.names, dtype=str).astype(
            f"<U{max(1, max(len(n) for n in code_file.names))}"
        ),
        "sizes": np.ascontiguousarray(code_file.sizes, dtype="<i4"),
    }

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for key in MEMBERS:
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(
                        member, arrays[key], version=(1, 0), allow_pickle=False
                    )

    check_output(path)
    save_or_fail(path, write, "the code file")


def check_output(path: Path) -> None:
    """Refuse an output path that cannot take a code file (call it before the work)."""
    check_output_file(Path(path), "the output", "-o codes.vqc")


def read_codes(path: Path) -> CodeFile:
    """Read and fully validate a code file; raises WorkError (damaged, doctored, unsupported
    version) or UsageError (missing file), never anything else."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("no such code file", path, "give a .vqc file written by vqtool encode")
    try:
        arrays = _read_members(path)
    except VqtoolError:
        raise
    except Exception as exc:  # zipfile and numpy raise many types on damaged input
        reason = first_line(exc, 120)
        raise WorkError(f"not a readable code file: {reason}", path, _DAMAGED) from exc
    return _from_arrays(arrays, path)


def check_codes_for_model(
    code_file: CodeFile, fingerprint: str, num_embeddings: int, embedding_dim: int, where: object
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


def _damaged(what: str, path: Path) -> WorkError:
    return WorkError(what, path, _DAMAGED)


def _read_members(path: Path) -> dict[str, np.ndarray]:
    file_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        expected = sorted(f"{key}.npy" for key in MEMBERS)
        if sorted(names) != expected:
            raise _damaged(f"not a vqtool code file: it holds {sorted(names)[:8]}", path)
        arrays = {}
        for info in infos:
            key = info.filename[: -len(".npy")]
            _check_member(info, file_size, path)
            arrays[key] = _parse_npy(archive.read(info), key, path)
    return arrays


def _check_member(info: zipfile.ZipInfo, file_size: int, path: Path) -> None:
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


def _parse_npy(data: bytes, key: str, path: Path) -> np.ndarray:
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


def _header(array: np.ndarray, path: Path) -> dict[str, Any]:
    if array.dtype.kind != "U" or array.shape != ():
        raise _damaged(f"header must be a 0-d unicode array, got {array.dtype} {array.shape}", path)
    try:
        header = json.loads(str(array[()]))
    except (ValueError, RecursionError) as exc:
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
    if version != VERSION or isinstance(version, bool):
        raise WorkError(
            f"unsupported code file version {str(version)[:20]} (this vqtool reads {VERSION})",
            path,
            "use the vqtool version that wrote it, or encode the images again",
        )
    if sorted(header) != sorted(HEADER_KEYS):
        raise _damaged(f"the header's keys are {sorted(header)[:10]}", path)
    return header


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _from_arrays(arrays: dict[str, np.ndarray], path: Path) -> CodeFile:
    header = _header(arrays["header"], path)
    checkpoint = header["checkpoint"]
    if not (isinstance(checkpoint, str) and _FINGERPRINT.fullmatch(checkpoint)):
        raise _damaged("the header's checkpoint is not a sha256 fingerprint", path)
    if not _int(header["num_embeddings"], 2, 65536):
        raise _damaged("the header's num_embeddings is not an integer in 2..65536", path)
    if not _int(header["embedding_dim"], 1, 1 << 20):
        raise _damaged("the header's embedding_dim is not a positive integer", path)
    if header["downsample"] != DOWNSAMPLE or isinstance(header["downsample"], bool):
        raise _damaged(f"the header's downsample is not {DOWNSAMPLE}", path)
    image_size = header["image_size"]
    if not (
        isinstance(image_size, list)
        and len(image_size) == 2
        and all(_int(s, DOWNSAMPLE, MAX_IMAGE_PIXELS) and s % DOWNSAMPLE == 0 for s in image_size)
        and image_size[0] * image_size[1] <= MAX_IMAGE_PIXELS
    ):
        raise _damaged("the header's image_size is not [H, W] in multiples of 4", path)
    codes, names, sizes = arrays["codes"], arrays["names"], arrays["sizes"]
    code_file = CodeFile(
        codes=codes,
        names=tuple(str(n) for n in names.reshape(-1)) if names.dtype.kind == "U" else (),
        sizes=sizes,
        checkpoint=checkpoint,
        num_embeddings=header["num_embeddings"],
        embedding_dim=header["embedding_dim"],
        image_size=(image_size[0], image_size[1]),
        downsample=header["downsample"],
        version=header["version"],
    )
    _validate(code_file, path, names.dtype, names.ndim)
    return code_file


def _validate(
    code_file: CodeFile, path: Path, names_dtype: np.dtype | None = None, names_ndim: int = 1
) -> None:
    """Arrays against the header: dtypes, shapes, every index < K, sizes, names."""
    codes, sizes = code_file.codes, code_file.sizes
    n = codes.shape[0] if codes.ndim else 0
    h, w = code_file.image_size[0] // DOWNSAMPLE, code_file.image_size[1] // DOWNSAMPLE
    if codes.dtype.kind != "u" or codes.dtype.itemsize != 2:
        raise _damaged(f"codes must be uint16, got {codes.dtype}", path)
    if codes.ndim != 3 or codes.shape[1:] != (h, w):
        raise _damaged(f"codes have shape {codes.shape}, expected (N, {h}, {w})", path)
    if n == 0:
        raise _damaged("the file holds no images", path)
    if int(codes.max()) >= code_file.num_embeddings:
        raise _damaged(f"code {int(codes.max())} is not below K={code_file.num_embeddings}", path)
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
    for row in np.unique(sizes, axis=0):
        size = (int(row[0]), int(row[1]))
        if min(size) < 1 or padded_size(size) != code_file.image_size:
            raise _damaged(
                f"size {size[0]}x{size[1]} does not pad to the header's "
                f"{code_file.image_size[0]}x{code_file.image_size[1]}",
                path,
            )
