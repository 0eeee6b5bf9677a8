"""Images to code indices and back: in memory for notebooks, and between files for the CLI.

`encode_images` / `decode_indices` turn a batch of uint8 images into indices and back, exactly
as `evaluate` reconstructs them: decode_indices(encode_images(x)) equals
`model.codes_to_images(model.images_to_codes(x))` (the model's pixel methods; for an image
in bands, as far as vqtool.models.bands says).
`encode_inputs` (files, folders, CIFAR-10 -> CodeFile) and `decode_file` (.vqc -> PNGs)
stream batches, so memory stays bounded however many images there are: only the codes (small)
are kept. An image larger than a batch goes through the networks in bands of code rows
(vqtool.models.bands), so memory stays bounded however large it is, up to the limits of
vqtool.images.read.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from vqtool.codes.entropy import CodingPrior, check_prior
from vqtool.codes.inputs import ImageItem, find_images, load_item
from vqtool.codes.names import name_problem, unique_names
from vqtool.codes.vqc import (
    CodeFile,
    Codes,
    Source,
    check_codes_for_model,
    check_stages,
    grids_of,
    join_codes,
    pick_images,
    read_codes,
)
from vqtool.errors import UsageError, WorkError, counted, os_reason
from vqtool.events import Progress
from vqtool.files import (
    DISK_FIX,
    check_no_file_above,
    check_output_file,
    current_umask,
    file_mode,
    fsync_dir,
    save_or_fail,
    write_all,
    write_file,
)
from vqtool.images.pixels import pad_to, pad_to_multiple, padded_size
from vqtool.images.png import Grid, png_bytes
from vqtool.images.read import MAX_IMAGE_WIDTH, DamagedImage
from vqtool.models import bands
from vqtool.models.config import DOWNSAMPLE
from vqtool.models.vqvae import VQVAE


class CodingModel(Protocol):
    """A VQ-VAE with its checkpoint's fingerprint, which code files record. The caller loads it
    (vqtool.vq.load.LoadedModel is one): the code-file pipeline never reads run folders."""

    @property
    def model(self) -> VQVAE: ...

    @property
    def fingerprint(self) -> str: ...


DEFAULT_BATCH = 256
# Pixels per model batch, whatever --batch-size says: 1,024 CIFAR images, or one 1000x1000
# photo (the encoder's first layer alone holds 64 floats per 4 pixels).
PIXEL_BUDGET = 1 << 20
# PNG-writing threads (zlib and file writes release the GIL). They share the cores with the
# decoder's own threads, so they take half the cores at most (on 2 cores one writer beat four).
PNG_WRITERS = max(1, min(4, (os.cpu_count() or 2) // 2))
PNG_TASK = 64  # images per PNG-writing task
NAMED_SKIPS = 5  # skipped files named one by one; the rest are counted


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )


def encode_images(model: VQVAE, images: Tensor, band_rows: int | None = None) -> Tensor:
    """uint8 (B, 3, H, W) -> int64 code indices (B, ceil(H/f), ceil(W/f)) on the CPU,
    f the run's model.downsample.

    Sides that are not multiples of f are padded at the bottom and right with copies of the
    last row and column, as `vqtool encode` does. Large images are encoded in bands of code
    rows, to the same codes (vqtool.models.bands); `band_rows` forces bands of that many.
    """
    _check_images(images)
    padded = pad_to_multiple(images, model.config.downsample)
    with torch.inference_mode():
        return bands.images_to_codes(model, padded, band_rows)


def decode_indices(model: VQVAE, indices: Tensor, band_rows: int | None = None) -> Tensor:
    """Code indices (B, h, w), or (B, n, h, w) of a run's first n stages -> uint8 images
    (B, 3, f h, f w) on the CPU.

    The decoder's output clamped to [0, 1] and rounded to 8 bits: (recon * 255).round().
    Large images are decoded in bands of code rows (vqtool.models.bands; `band_rows` forces
    bands of that many).
    """
    if indices.ndim not in (3, 4) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"expected integer indices (B, h, w), got {indices.dtype} {indices.shape}")
    with torch.inference_mode():
        return bands.codes_to_images(model, indices.to(torch.long), band_rows)


def batch_ranges(n: int, batch_size: int, pixels_per_image: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch: at most `batch_size` images and about PIXEL_BUDGET pixels."""
    step = max(1, min(batch_size, PIXEL_BUDGET // max(1, pixels_per_image)))
    for start in range(0, n, step):
        yield start, min(start + step, n)


def padded_shapes(
    items: Sequence[ImageItem], size: tuple[int, int] | None, factor: int = DOWNSAMPLE
) -> list[tuple[int, int]]:
    """The padded (H, W) of each image, sides multiples of the run's `factor`: its own size
    padded, or `size` (--size) padded for every image. A side shorter than one code's `factor`
    pixels is refused: padding would make up most of its only code."""
    if size is not None:
        if min(size) < factor:
            raise UsageError(
                f"--size {size[0]}x{size[1]} is smaller than one code's {factor}x{factor} pixels "
                "(the run's model.downsample)",
                "--size",
                f"give sides of at least {factor} pixels",
            )
        return [padded_size(size, factor)] * len(items)
    for item in items:
        if min(item.size) < factor:
            raise UsageError(
                f"{item.name} is {item.size[0]}x{item.size[1]} (HxW), smaller than one code's "
                f"{factor}x{factor} pixels (the run's model.downsample)",
                item.path if item.path is not None else item.name,
                f"encode images of at least {factor}x{factor} pixels, or enlarge them with "
                f"--size HxW",
            )
    return [padded_size(item.size, factor) for item in items]


def stages_to_keep(model: VQVAE, stages: int | None) -> int:
    """How many of a run's residual stages its codes keep: all of them, or the first `stages`
    (--stages; UsageError outside 1..S)."""
    check_stages(stages, model.stages, "--stages", "the run has")
    return model.stages if stages is None else stages


def codes_shape(model: VQVAE, n: int, stages: int, grid: tuple[int, int]) -> tuple[int, ...]:
    """The codes of n images: (n, h, w) for a run of one stage, else (n, stages, h, w)."""
    return (n, *grid) if model.stages == 1 else (n, stages, *grid)


class EncodedBatch(NamedTuple):
    indices: list[int]  # the images' positions in Encoding.items
    images: Tensor  # uint8 (B, 3, H, W): the images as encoded, padded to their shared shape
    codes: Tensor  # int64 (B, H / f, W / f), or (B, S, H / f, W / f) of the stages kept


class Encoding:
    """Inputs found (inputs.find_images) and sized for encoding: `batches` reads, pads and
    encodes them batch by batch, setting damaged images of folders aside (unless `strict`);
    `finish` then refuses a set of only damaged images, or notes what was skipped.

    `size` (H, W) resizes every image first; without it, each image keeps its own size,
    padded to a multiple of `factor` (the run's model.downsample) on each side. Images of
    different padded sizes are encoded in batches of one size at a time, a size after
    another in the order of its first image.
    """

    def __init__(
        self,
        inputs: Sequence[str],
        data_dir: Path,
        size: tuple[int, int] | None = None,
        strict: bool = False,
        resize_mode: str = "stretch",
        factor: int = DOWNSAMPLE,
    ) -> None:
        self.found = find_images(inputs, data_dir, size, strict, resize_mode)
        self.factor = factor
        self.items = self.found.items
        self.size = size
        self.resize_mode = resize_mode
        self.strict = strict
        self.shapes = padded_shapes(self.items, size, factor)  # (H, W) each image is padded to
        self.kept = np.ones(len(self.items), bool)
        self.damaged = list(self.found.damaged)

    @property
    def shape(self) -> tuple[int, int] | None:
        """(H, W) every image is padded to, or None when their padded sizes differ."""
        return self.shapes[0] if len(set(self.shapes)) == 1 else None

    def grids(self) -> list[tuple[int, int]]:
        """Each distinct grid (h, w) of codes per image, in the order of its first image."""
        return list(dict.fromkeys((h // self.factor, w // self.factor) for h, w in self.shapes))

    def size_of(self, index: int) -> tuple[int, int]:
        """(height, width) of image `index` as encoded: after --size, before padding."""
        return self.size if self.size is not None else self.items[index].size

    def sizes(self) -> np.ndarray:
        """int32 (N', 2): the size of each image kept, as encoded (after `batches`)."""
        return np.array([self.size_of(int(i)) for i in np.flatnonzero(self.kept)], np.int32)

    def names(self) -> tuple[str, ...]:
        """The name of each image kept (after `batches`)."""
        return tuple(item.name for item, keep in zip(self.items, self.kept, strict=True) if keep)

    def batches(
        self,
        model: VQVAE,
        batch_size: int = DEFAULT_BATCH,
        on_progress: Progress | None = None,
        stages: int | None = None,
    ) -> Iterator[EncodedBatch]:
        """The images read, padded and encoded a batch at a time, each batch of one padded
        size; a run of residual stages gives the codes of all its stages, or of the first
        `stages`."""
        n, done = len(self.items), 0
        groups: dict[tuple[int, int], list[int]] = {}
        for i, shape in enumerate(self.shapes):
            groups.setdefault(shape, []).append(i)
        for shape, members in groups.items():
            for start, stop in batch_ranges(len(members), batch_size, shape[0] * shape[1]):
                batch, indices = [], []
                for i in members[start:stop]:
                    try:
                        image = load_item(self.items[i], self.size, self.resize_mode)
                        batch.append(pad_to(image, shape))
                        indices.append(i)
                    except DamagedImage as problem:
                        if self.strict or not self.items[i].in_folder:
                            raise
                        self.kept[i] = False
                        self.damaged.append(problem)
                if batch:
                    images = torch.stack(batch)
                    codes = encode_images(model, images)
                    if codes.ndim == 4 and stages is not None:
                        codes = codes[:, :stages]
                    yield EncodedBatch(indices, images, codes)
                done += stop - start
                if on_progress is not None:
                    on_progress(done, n)

    def finish(self, on_note: Callable[[str], None] | None = None) -> None:
        """After the batches: WorkError when every image was damaged, else a note on what
        was skipped (noted once the work has succeeded: a failure stays a single line)."""
        if not self.kept.any():
            raise WorkError(
                f"every image is damaged: {len(self.damaged)} could not be read",
                self.damaged[0].where,
                "check the files (the first one is named here)",
            )
        _note_skips(self.found.skipped, self.damaged, on_note or (lambda message: None))


class CodeStore:
    """The codes of an Encoding's images as its batches arrive: one array when the images
    share a padded size, else one array an image (a code file's two forms of codes)."""

    def __init__(self, encoding: Encoding, model: VQVAE, stages: int) -> None:
        self.encoding = encoding
        n, shape = len(encoding.items), encoding.shape
        self.array: np.ndarray | None = None
        self.parts: list[np.ndarray] = []
        if shape is not None:
            grid = (shape[0] // encoding.factor, shape[1] // encoding.factor)
            self.array = np.empty(codes_shape(model, n, stages, grid), np.uint16)
        else:
            self.parts = [np.empty(0, np.uint16)] * n

    def add(self, batch: EncodedBatch) -> None:
        codes = batch.codes.numpy().astype(np.uint16)
        if self.array is not None:
            self.array[batch.indices] = codes
            return
        for i, image in zip(batch.indices, codes, strict=True):
            self.parts[i] = image

    def kept(self) -> tuple[Codes, tuple[int, int] | None]:
        """The codes of the images kept, and the padded size they share (None when it
        differs): one array when they share it (also when only damaged images differed)."""
        keep = self.encoding.kept
        if self.array is not None:
            return self.array[keep], self.encoding.shape
        parts = [part for part, k in zip(self.parts, keep, strict=True) if k]
        return join_codes(parts, self.encoding.sizes(), self.encoding.factor)


def encode_inputs(
    loaded: CodingModel,
    inputs: Sequence[str],
    data_dir: Path,
    size: tuple[int, int] | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
    strict: bool = False,
    stages: int | None = None,
    resize_mode: str = "stretch",
) -> CodeFile:
    """Encode image files, folders and CIFAR-10 splits (see inputs.find_images) into a CodeFile.

    `size` (H, W) resizes every image first, as `resize_mode` says ("stretch", "centre-crop"
    or "random-crop": vqtool.images.fit; the CLI's default is the run's data.resize); without
    it, each image keeps its own size, padded to the run's factor: images of different padded
    sizes give a file of several grids (CodeFile.codes a tuple, a file of version 5 or 6).
    Images are read batch by batch; only the codes are kept. Files in folders that are not
    images, and damaged images in folders, are skipped with a note (`on_note`) unless
    `strict`, which makes them errors; a damaged file named on its own is always an error.
    A run of S residual stages gives codes (N, S, h, w), or its first `stages` of them.
    """
    kept_stages = stages_to_keep(loaded.model, stages)
    factor = loaded.model.config.downsample
    encoding = Encoding(inputs, data_dir, size, strict, resize_mode, factor)
    store = CodeStore(encoding, loaded.model, kept_stages)
    model = loaded.model.folded()
    for batch in encoding.batches(model, batch_size, on_progress, kept_stages):
        store.add(batch)
    encoding.finish(on_note)
    codes, image_size = store.kept()
    config = loaded.model.config
    return CodeFile(
        codes=codes,
        names=encoding.names(),
        sizes=encoding.sizes(),
        checkpoint=loaded.fingerprint,
        num_embeddings=config.num_embeddings,
        embedding_dim=config.embedding_dim,
        downsample=config.downsample,
        image_size=image_size,
    )


def _note_skips(
    not_images: Sequence[Path], damaged: Sequence[DamagedImage], note: Callable[[str], None]
) -> None:
    """Name the first few files skipped, and count them all."""
    if not_images:
        shown = ", ".join(str(p) for p in not_images[:NAMED_SKIPS])
        more = len(not_images) - NAMED_SKIPS
        note(
            f"skipped {counted(len(not_images), 'non-image file')}: {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    for problem in damaged[:NAMED_SKIPS]:
        note(f"skipped {problem.where}: {problem.what}")
    if damaged:
        unnamed = len(damaged) - NAMED_SKIPS
        rest = f", {unnamed} not named" if unnamed > 0 else ""
        note(f"skipped {counted(len(damaged), 'damaged image')}{rest}; --strict refuses them")


class DecodeResult(NamedTuple):
    images: int  # PNGs written
    out_dir: Path
    grid: Path | None
    grid_images: int  # images shown in the grid (the first ones; a grid is capped in size)
    stages: int  # residual stages decoded
    file_images: int  # images the code file holds (more than `images` when some were picked)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (decode --json)."""
        return {
            "output": str(self.out_dir),
            "images": self.images,
            "file_images": self.file_images,
            "stages": self.stages,
            "grid": None if self.grid is None else str(self.grid),
            "grid_images": self.grid_images,
        }


def plan_outputs(names: Sequence[str], out_dir: Path) -> list[Path]:
    """`out_dir/<name>.png` for each name, made unique; refuses any path that would land
    outside `out_dir` (through '..' or a symbolic link) or where a file or folder is in the way.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError("the output is not a folder", out_dir, "give a folder for the PNGs")
    root = out_dir.resolve()
    targets = []
    checked: set[Path] = set()
    for name in unique_names(names):
        problem = name_problem(name)
        if problem is not None:
            raise WorkError(f"the code file holds {problem}", out_dir, "encode the images again")
        target = out_dir / f"{name}.png"
        parent = target.parent
        if parent not in checked:
            if not parent.resolve().is_relative_to(root):
                raise WorkError(
                    f"name {name[:60]!r} would land outside the output folder",
                    out_dir,
                    "remove the symbolic link inside it, or choose another -o",
                )
            for folder in (parent, *parent.parents):
                if folder == out_dir:
                    break
                if folder.exists() and not folder.is_dir():
                    raise UsageError(
                        "a file is in the way", folder, "remove it or choose another -o"
                    )
            checked.add(parent)
        if target.is_dir():
            raise UsageError("a folder is in the way", target, "remove it or choose another -o")
        targets.append(target)
    return targets


Writer = Callable[[Path, bytes, int], None]


def _write_pngs(jobs: Sequence[tuple[Path, np.ndarray]], mode: int, writer: Writer) -> None:
    for path, image in jobs:
        try:
            writer(path, png_bytes(image), mode)
        except OSError as exc:
            raise WorkError(f"could not write the PNG: {os_reason(exc)}", path, DISK_FIX) from exc


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (it must not exist) and write `data`: for files inside a staging folder,
    which is renamed into place whole, so no file needs a temp name of its own."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _staging_folder(out_dir: Path) -> Path | None:
    """A hidden folder beside `out_dir` to decode into, renamed to `out_dir` at the end; None
    when `out_dir` already exists (then each PNG gets a temp name and a rename of its own).

    One rename for the whole folder instead of one per file: creating and renaming 10,000
    temp files costs about a second more than writing them in place (ext4, two cores).
    """
    if os.path.lexists(out_dir):
        return None
    check_no_file_above(out_dir, "remove it or choose another -o")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        # A short fixed prefix: a name of its own could push a long -o name past NAME_MAX.
        made = tempfile.mkdtemp(prefix=".vqtool-decode-", suffix=".partial", dir=out_dir.parent)
        staging = Path(made)
        # mkdtemp's 0o700 -> what mkdir would give (keeping a setgid bit inherited from the
        # parent, so the PNGs get the shared folder's group as they would in a plain folder).
        inherited = os.stat(staging).st_mode & 0o7000
        os.chmod(staging, inherited | (0o777 & ~current_umask()))
    except OSError as exc:
        raise WorkError(f"could not make the folder: {os_reason(exc)}", out_dir, DISK_FIX) from exc
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished staging folder to `out_dir` and make the rename durable (the PNGs'
    own bytes are not fsynced: see vqtool.files.write_file)."""
    try:
        if os.path.lexists(out_dir):
            # rename(2) would silently replace an empty folder that appeared meanwhile.
            raise FileExistsError(17, "File exists")
        os.rename(staging, out_dir)
    except OSError as exc:
        raise WorkError(
            f"could not move the PNGs into place ({os_reason(exc)}; did the folder appear "
            "while decoding?)",
            out_dir,
            "choose another -o",
        ) from exc
    fsync_dir(out_dir.parent)


class Pick(NamedTuple):
    """Which images of a code file to decode: those whose names match `names` (a glob), then
    the `first` of them; None: all."""

    first: int | None = None
    names: str | None = None


ALL_IMAGES = Pick()


def decode_file(
    loaded: CodingModel,
    codes_path: Source,
    out_dir: Path,
    grid: Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Progress | None = None,
    prior: CodingPrior | None = None,
    on_stream: Progress | None = None,
    stages: int | None = None,
    pick: Pick = ALL_IMAGES,
) -> DecodeResult:
    """Decode a .vqc (a file, or CodeBytes in memory) into one PNG per image at its stored
    size (each image of a file of several grids at its own), named after the stored names;
    `pick` keeps some of them (vqc.pick_images).

    A file compressed with a prior needs that prior (`prior`); `on_stream(done, n)` follows
    its range decoding, `on_progress` the PNGs. `stages` decodes the file's first stages
    only (a compressed file's later stages are not even range-decoded).

    Everything is checked first (the file, its fingerprint against `loaded`, the output
    paths); only then are PNGs written: into a hidden folder beside `out_dir` that is renamed
    to it at the end when `out_dir` is new, else each to a temp name, then renamed. Either
    way no PNG is ever seen half-written. `grid`, when given, also gets the first images side
    by side.
    """
    config = loaded.model.config
    if prior is not None:  # checked before a long decode
        check_prior(prior, loaded.fingerprint, config.num_embeddings)
    code_file = read_codes(codes_path, prior, on_stream, stages)
    check_codes_for_model(
        code_file,
        loaded.fingerprint,
        config.num_embeddings,
        config.embedding_dim,
        codes_path,
        config.downsample,
    )
    if code_file.stages > loaded.model.stages:
        raise UsageError(
            f"the file holds {code_file.stages} stages, the run has {loaded.model.stages}",
            codes_path,
            "decode it with the run that encoded it",
        )
    widest = _largest_padded(code_file)[1]
    if widest > MAX_IMAGE_WIDTH:  # written before the limit existed
        raise UsageError(
            f"the file holds images {widest:,} pixels wide (padded), wider than vqtool "
            f"decodes ({MAX_IMAGE_WIDTH:,})",
            codes_path,
            "encode the images again at most that wide (--size HxW)",
        )
    file_images = len(code_file.names)
    code_file = pick_images(code_file, pick.first, pick.names)
    targets = plan_outputs(code_file.names, out_dir)
    if grid is not None:
        check_output_file(Path(grid), "the grid", "--grid grid.png")
    n = len(targets)
    sheet = Grid(n, _largest_padded(code_file)) if grid is not None else None
    out_dir = Path(out_dir)
    staging = _staging_folder(out_dir)
    try:
        if staging is not None:
            targets = [staging / t.relative_to(out_dir) for t in targets]
        with _made_folders(sorted({t.parent for t in targets})):
            _write_decoded(loaded, code_file, targets, batch_size, sheet, staging, on_progress)
        if grid is not None and sheet is not None:
            # Before the folder appears: a grid that cannot be written leaves no new folder.
            data = sheet.png()
            save_or_fail(grid, lambda f: f.write(data), "the grid")
        if staging is not None:
            _publish(staging, out_dir)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    shown = sheet.capacity if sheet is not None else 0
    return DecodeResult(n, out_dir, grid, shown, code_file.stages, file_images)


@contextlib.contextmanager
def _made_folders(folders: Sequence[Path]) -> Iterator[None]:
    """Make `folders` for the PNGs (a class each); on a failure inside, remove the ones this
    made (left empty), and after success fsync them."""
    made = _new_folders(folders)
    try:
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                what = f"could not make the folder: {os_reason(exc)}"
                raise WorkError(what, folder, DISK_FIX) from exc
        yield
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for folder in folders:
        fsync_dir(folder)


def _new_folders(folders: Sequence[Path]) -> list[Path]:
    """The folders among `folders` and above them that do not exist yet, deepest first."""
    new: set[Path] = set()
    for folder in folders:
        for path in (folder, *folder.parents):
            if os.path.lexists(path):
                break
            new.add(path)
    return sorted(new, key=lambda path: len(path.parts), reverse=True)


def _write_decoded(
    loaded: CodingModel,
    code_file: CodeFile,
    targets: list[Path],
    batch_size: int,
    sheet: Grid | None,
    staging: Path | None,
    on_progress: Progress | None,
) -> None:
    """Decode every image of `code_file` to its PNG in `targets` (in a staging folder: written
    in place; otherwise each through a temp name)."""
    n, done = len(targets), 0
    mode = file_mode()
    writer: Writer = _write_new_file if staging is not None else write_file
    model = loaded.model.folded()
    factor = code_file.downsample
    pool = concurrent.futures.ThreadPoolExecutor(PNG_WRITERS)
    try:
        pending: list[concurrent.futures.Future[None]] = []
        # a grid size at a time (one group for images of one size): a batch decodes one shape
        for group in code_file.groups():
            pixels = group.grid[0] * group.grid[1] * factor * factor
            for start, stop in batch_ranges(len(group.indices), batch_size, pixels):
                indices = torch.from_numpy(group.codes[start:stop].astype(np.int64))
                images = decode_indices(model, indices).permute(0, 2, 3, 1).numpy()
                jobs = []
                for j, i in enumerate(group.indices[start:stop].tolist()):
                    h, w = int(code_file.sizes[i, 0]), int(code_file.sizes[i, 1])
                    image = np.ascontiguousarray(images[j, :h, :w])
                    jobs.append((targets[i], image))
                    if sheet is not None:
                        sheet.add(i, image)
                # A task per few dozen images, not per image: less hand-over between threads.
                writes = [
                    pool.submit(_write_pngs, jobs[k : k + PNG_TASK], mode, writer)
                    for k in range(0, len(jobs), PNG_TASK)
                ]
                # At most two batches in flight: decoding overlaps writing, memory stays bounded.
                for future in pending:
                    future.result()
                pending = writes
                done += stop - start
                if on_progress is not None:
                    on_progress(done, n)
        for future in pending:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _largest_padded(code_file: CodeFile) -> tuple[int, int]:
    """The padded size every image shares, or the largest height and width among them: a
    cell of the grid sheet that holds any of them."""
    if code_file.image_size is not None:
        return code_file.image_size
    grids = grids_of(code_file.sizes, code_file.downsample)
    height, width = (int(side) * code_file.downsample for side in grids.max(0))
    return height, width
