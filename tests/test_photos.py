"""Photos at their own size (`[data] resize = "native-crop"`, the `photo` profile): windows at
a photo's own pixels per seed and epoch, the centre window for evaluation, small photos scaled
up, data.scale, the prior's tiles, the cache's bound and bad files, and the profile from a
folder of photos through train, evaluate, prior, sample, plot, encode, decode and roundtrip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_error_line
from PIL import Image
from typer.testing import CliRunner, Result

from vqtool.checkpoint import load_checkpoint
from vqtool.cli import app
from vqtool.codes.vqc import read_codes
from vqtool.data import folders
from vqtool.data.datasets import load_images, load_split, load_training_images
from vqtool.data.folders import CACHE_DIR, ensure_cache
from vqtool.data.photos import NativeCrops, Photos, tile_corners, windows
from vqtool.images import fit
from vqtool.profiles import DataConfig, load_profile
from vqtool.vq.load import load_model
from vqtool.vq.train import run_training

runner = CliRunner()


def vqtool(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def coded(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) whose pixels say where they are: red the row, green the column (both
    mod 251), blue a value of the seed, so a window shows its own corner."""
    h, w = size
    rows, cols = np.mgrid[0:h, 0:w]
    blue = np.full((h, w), (37 * seed) % 256)
    return np.stack([rows % 251, cols % 251, blue], -1).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def photo_data(path: Path, *sets: str, size: int = 32) -> DataConfig:
    """A native-crop [data] section for the folder at `path` (through the profile's checks)."""
    keys = [f"data.path={path}", f"data.image_size=[{size},{size}]", "data.test_fraction=0", *sets]
    return load_profile("photo", keys).data


# Photos as the shapes they are: (H, W) each, two of them smaller than a 32 x 32 window.
SHAPES = [(70, 90), (48, 120), (33, 32), (100, 41), (20, 50), (12, 8)]


def coded_folder(root: Path) -> dict[str, np.ndarray]:
    """PNG photos of SHAPES below `root`, each of `coded` pixels; their pixels by name."""
    pixels = {f"p{i}.png": coded(shape, i) for i, shape in enumerate(SHAPES)}
    for name, image in pixels.items():
        save(root / name, image)
    return pixels


def test_windows_are_the_photo_s_own_pixels_per_seed_and_epoch(tmp_path: Path) -> None:
    originals = coded_folder(tmp_path / "pics")
    data = photo_data(tmp_path / "pics")
    train = load_training_images(data, tmp_path / "data", seed=5)
    assert isinstance(train.crops, NativeCrops) and train.crops.count == len(SHAPES)
    assert train.images.dim() == 1 and train.images.dtype == torch.uint8
    every = torch.arange(len(SHAPES))
    corners = {}
    for epoch in (0, 1):
        batch = train.crops(train.images, every, epoch)
        assert batch.shape == (len(SHAPES), 3, 32, 32)
        for i, name in enumerate(sorted(originals)):
            shape = SHAPES[int(name[1:-4])]
            if shape[0] < 32 or shape[1] < 32:
                continue  # scaled up: test_small_photos_are_scaled_up_just_enough
            y, x = int(batch[i, 0, 0, 0]), int(batch[i, 1, 0, 0])  # the window's corner
            window = chw(originals[name])[:, y : y + 32, x : x + 32]
            assert torch.equal(batch[i], window), (name, epoch)
            corners[name, epoch] = (y, x)
    assert any(corners[n, 0] != corners[n, 1] for n, _ in corners)  # a new window each epoch
    again = load_training_images(data, tmp_path / "data", seed=5).crops
    other = load_training_images(data, tmp_path / "data", seed=6).crops
    assert again is not None and other is not None
    assert torch.equal(train.crops.offsets(3), again.offsets(3))  # the seed and epoch alone
    assert not torch.equal(train.crops.offsets(3), other.offsets(3))
    room = train.crops.sizes - 32  # each corner leaves the window inside its photo
    assert bool(((train.crops.offsets(3) >= 0) & (train.crops.offsets(3) <= room)).all())
    # The one gather a GPU takes gives the same windows as the CPU's slices.
    photos = Photos(train.images, train.crops.sizes)
    index, corner = torch.tensor([3, 0, 3]), train.crops.offsets(0)[[3, 0, 3]]
    sliced = windows(photos.store, index, corner, (32, 32), gather=False)
    gathered = windows(photos.store, index, corner, (32, 32), gather=True)
    assert torch.equal(sliced, gathered)
    assert torch.equal(sliced, train.crops(train.images, index, 0))


def test_evaluation_takes_the_centre_window(tmp_path: Path) -> None:
    originals = coded_folder(tmp_path / "pics")
    images = load_images(photo_data(tmp_path / "pics"), tmp_path / "data", "train")
    assert images.shape == (len(SHAPES), 3, 32, 32)
    for i, name in enumerate(sorted(originals)):
        h, w = originals[name].shape[:2]
        if h < 32 or w < 32:
            continue
        top, left = (h - 32) // 2, (w - 32) // 2
        assert torch.equal(images[i], chw(originals[name])[:, top : top + 32, left : left + 32])


def test_small_photos_are_scaled_up_just_enough(tmp_path: Path) -> None:
    originals = coded_folder(tmp_path / "pics")
    data = photo_data(tmp_path / "pics")
    cache = ensure_cache(data, tmp_path / "data")
    sizes = cache.sizes["train"].tolist()
    stored = {e.rel: tuple(s) for e, s in zip(cache.files["train"], sizes, strict=True)}
    # Kept as they are when they cover 32 x 32; else the least size of their aspect that does.
    assert stored == {
        "p0.png": (70, 90),
        "p1.png": (48, 120),
        "p2.png": (33, 32),
        "p3.png": (100, 41),
        "p4.png": (32, 80),
        "p5.png": (48, 32),
    }
    photos = Photos(torch.from_numpy(cache.arrays["train"]), torch.from_numpy(cache.sizes["train"]))
    for i, name in enumerate(sorted(originals)):
        h, w = stored[name]
        expected = Image.fromarray(originals[name])
        if (h, w) != originals[name].shape[:2]:
            expected = expected.resize((w, h), Image.Resampling.BICUBIC)
        assert torch.equal(photos.image(i), chw(np.asarray(expected))), name
    assert fit.native_size((20, 50), (32, 32)) == (32, 80)
    assert fit.native_size((1000, 10), (32, 32)) == (3200, 32)


def test_data_scale_shrinks_each_photo_first(tmp_path: Path) -> None:
    big = save(tmp_path / "pics" / "big.png", coded((200, 300)))
    save(tmp_path / "pics" / "small.png", coded((50, 50)))
    data = photo_data(tmp_path / "pics", "data.scale=0.5")
    cache = ensure_cache(data, tmp_path / "data")
    assert cache.sizes["train"].tolist() == [[100, 150], [32, 32]]  # the small one covers 32
    with Image.open(big) as image:
        half = np.asarray(image.resize((150, 100), Image.Resampling.BICUBIC))
    assert np.array_equal(cache.arrays["train"][: 3 * 100 * 150], chw(half).reshape(-1).numpy())
    # Another scale is another cache; the first one stays as it was.
    whole = ensure_cache(photo_data(tmp_path / "pics"), tmp_path / "data")
    assert whole.folder != cache.folder and whole.sizes["train"][0].tolist() == [200, 300]


def test_jpegs_at_their_own_size_keep_pillow_s_pixels(tmp_path: Path) -> None:
    path = save(tmp_path / "pics" / "a.jpg", coded((120, 160)))
    cache = ensure_cache(photo_data(tmp_path / "pics"), tmp_path / "data")
    with Image.open(path) as image:
        decoded = chw(np.asarray(image.convert("RGB")))  # no draft scaling at scale 1
    assert np.array_equal(cache.arrays["train"], decoded.reshape(-1).numpy())


def test_the_prior_learns_from_the_tiles_of_each_photo(tmp_path: Path) -> None:
    originals = coded_folder(tmp_path / "pics")
    split = load_split(photo_data(tmp_path / "pics"), tmp_path / "data", "train")
    cache = ensure_cache(photo_data(tmp_path / "pics"), tmp_path / "data")
    per_photo = [(h // 32) * (w // 32) for h, w in cache.sizes["train"].tolist()]
    assert per_photo == [4, 3, 1, 3, 2, 1] and split.images.shape == (14, 3, 32, 32)
    assert split.labels is None
    assert torch.equal(split.images[1], chw(originals["p0.png"])[:, 0:32, 32:64])  # row by row
    assert torch.equal(split.images[3], chw(originals["p0.png"])[:, 32:64, 32:64])
    photos = Photos(torch.from_numpy(cache.arrays["train"]), torch.from_numpy(cache.sizes["train"]))
    images, corners = tile_corners(photos, (32, 32))
    assert images.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 4, 4, 5]
    assert corners[4:7].tolist() == [[0, 0], [0, 32], [0, 64]]


def test_a_folder_too_large_for_the_cache_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        save(tmp_path / "photos" / f"{i}.png", coded((200, 300), i))
    monkeypatch.setattr(folders, "MAX_PHOTO_BYTES", 400_000)  # 4 x 180,000 bytes decoded

    def never(*args: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(folders, "decode_native", never)
    result = vqtool("train", "--profile", "photo", "--set", "train.steps=1", "--run-dir", "run")
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert line.startswith("error: the photos take 0.7 MB decoded at data.scale 1, more than ")
    assert "more than the photo cache holds (0.4 MB) (" in line
    assert line.endswith(": set data.scale=0.74 or lower, or train on fewer photos")
    assert not (tmp_path / "run").exists()
    left = [p.name for p in (tmp_path / "data" / CACHE_DIR).iterdir()]
    assert len(left) == 1 and left[0].endswith(".lock")  # no cache, no build folder
    # The scale it names fits.
    monkeypatch.setattr(folders, "decode_native", lambda path, stored: np.zeros((3, *stored)))
    cache = ensure_cache(load_profile("photo", ["data.scale=0.74"]).data, tmp_path / "data")
    assert cache.arrays["train"].nbytes + cache.arrays["test"].nbytes <= 400_000


def test_bad_files_are_left_out_and_the_rest_kept_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    originals = {f"{i}.png": coded((40 + 10 * i, 50), i) for i in range(4)}
    for name, pixels in originals.items():
        save(tmp_path / "pics" / name, pixels)
    good = (tmp_path / "pics" / "1.png").read_bytes()
    (tmp_path / "pics" / "1.png").write_bytes(good[: len(good) // 2])  # header whole, data cut
    (tmp_path / "pics" / "9-empty.jpg").write_bytes(b"")  # no header at all
    data = photo_data(tmp_path / "pics")
    cache = ensure_cache(data, tmp_path / "data")
    assert [rel for rel, _ in cache.skipped] == ["1.png", "9-empty.jpg"]
    assert any("2 of 5 image files could not be read" in note for note in cache.notes)
    kept = [e.rel for e in cache.files["train"]]
    assert kept == ["0.png", "2.png", "3.png"]
    photos = Photos(torch.from_numpy(cache.arrays["train"]), torch.from_numpy(cache.sizes["train"]))
    for i, rel in enumerate(kept):
        assert torch.equal(photos.image(i), chw(originals[rel]))
    assert ensure_cache(data, tmp_path / "data").built_s is None  # reused as it is
    # A build killed halfway leaves nothing that a later run would trust.
    decode = folders.decode_native
    calls = []

    def dying(path: Path, stored: tuple[int, int]) -> np.ndarray:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return decode(path, stored)

    monkeypatch.setattr(folders, "decode_native", dying)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(photo_data(tmp_path / "pics", "data.scale=0.9"), tmp_path / "data")
    names = sorted(p.name for p in (tmp_path / "data" / CACHE_DIR).iterdir())
    assert [n for n in names if not n.endswith(".lock")] == [cache.folder.name]


def test_a_torn_or_foreign_sizes_file_is_rebuilt(tmp_path: Path) -> None:
    coded_folder(tmp_path / "pics")
    data = photo_data(tmp_path / "pics")
    cache = ensure_cache(data, tmp_path / "data")
    with open(cache.folder / "train-sizes.npy", "r+b") as f:
        f.truncate(100)
    cache = ensure_cache(data, tmp_path / "data")
    assert cache.built_s is not None
    sizes = cache.sizes["train"].copy()
    sizes[0, 1] += 1  # no longer the pixels' count
    np.save(cache.folder / "train-sizes.npy", sizes)
    assert ensure_cache(data, tmp_path / "data").built_s is not None


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["data.resize=random-crop", "data.scale=0.5"], 'data.scale is for resize = "native-crop"'),
        (["data.scale=0"], "data.scale must be a number > 0 and <= 1, got 0"),
        (["data.scale=1.5"], "data.scale must be a number > 0 and <= 1, got 1.5"),
        (
            ["data.dataset=cifar10", "data.path=", "data.image_size=[32,32]", "data.scale=0.5"],
            'data.scale is for dataset = "folder"',
        ),
    ],
)
def test_bad_scales_are_one_line(sets: list[str], message: str, tmp_path: Path) -> None:
    coded_folder(tmp_path / "photos")
    result = vqtool("train", "--profile", "photo", *[f"--set={s}" for s in sets])
    assert result.exit_code == 2
    assert one_error_line(result.output).startswith("error: " + message), result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


TINY = [
    "model.num_hiddens=16",
    "model.num_residual_hiddens=8",
    "model.num_residual_layers=1",
    "model.embedding_dim=8",
    "model.num_embeddings=32",
    "model.stages=2",
    "data.batch_size=4",
    "train.log_every=1",
]


# Training photos (H, W), some smaller than a 64 x 64 window, and held-out ones in test/.
TRAIN_SHAPES = [(72, 96), (96, 64), (50, 130), (64, 64), (40, 40), (88, 72), (24, 30), (120, 80)]
TEST_SHAPES = [(64, 100), (40, 60)]


def photo_folder(root: Path) -> Path:
    """Generated photos of TRAIN_SHAPES and TEST_SHAPES (in test/), PNGs and JPEGs."""
    rng = np.random.default_rng(0)
    names = [f"p{i}" for i in range(len(TRAIN_SHAPES))] + [f"test/t{i}" for i in range(2)]
    for i, (name, (h, w)) in enumerate(zip(names, TRAIN_SHAPES + TEST_SHAPES, strict=True)):
        smooth = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))
        save(root / f"{name}.{'jpg' if i % 2 else 'png'}", smooth[:h, :w].astype(np.uint8))
    return root


def test_photo_profile_trains_evaluates_and_codes_photos_at_their_own_size(
    tmp_path: Path,
) -> None:
    photos = photo_folder(tmp_path / "pics")
    sets = [f"--set={s}" for s in [*TINY, f"data.path={photos}", "train.steps=3"]]
    result = vqtool("train", "--profile", "photo", *sets, "--run-dir", "run")
    assert result.exit_code == 0, result.output
    assert "at their own size times 1 (" in result.output
    assert "1 process, 8 images, " in result.output and "step 3/3" in result.output
    loaded = load_model(tmp_path / "run")
    assert loaded.profile.data.resize == "native-crop" and loaded.model.config.downsample == 8

    result = vqtool("evaluate", "run", "--json", "-")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["images"] == 2 and metrics["bits_per_image"] == 2 * 8 * 8 * 5  # 64 / 8 = 8

    # A prior trains on the windows that tile each photo: 1 or 2 each, 9 (and 2 held out).
    prior = ["--set=train.steps=2", "--set=train.batch_size=4", "--set=train.eval_every=0"]
    result = vqtool("prior", "run", "--profile", "prior-coding", *prior)
    assert result.exit_code == 0, result.output
    assert "train split with the VQ run: 9 code grids" in result.output
    assert "test split with the VQ run: 2 code grids" in result.output
    result = vqtool("sample", "run/prior", "-n", "2", "-o", "s.vqc")
    assert result.exit_code == 0, result.output
    assert read_codes(tmp_path / "s.vqc").codes.shape == (2, 2, 8, 8)
    result = vqtool("plot", "run", "-o", "figures")  # the test photos' centre windows
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "reconstructions.png").is_file()

    # Photos are encoded whole at their own size (padded to the factor) and decoded back.
    result = vqtool("encode", "run", photos / "p0.png", "-o", "p0.vqc")
    assert result.exit_code == 0, result.output
    assert read_codes(tmp_path / "p0.vqc").codes.shape == (1, 2, 9, 12)
    result = vqtool("decode", "run", "p0.vqc", "-o", "out")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "p0.png") as png:
        assert png.size == (96, 72)
    result = vqtool("roundtrip", "run", photos / "p2.png", "-o", "rt.png", "--json", "-")
    assert result.exit_code == 0, result.output
    # The prior, trained on 8 x 8 windows, codes the photo's whole 9 x 12 grids: the same PNG.
    result = vqtool("encode", "run", photos / "p0.png", "-o", "pp.vqc", "--prior", "run/prior")
    assert result.exit_code == 0, result.output
    result = vqtool("decode", "run", "pp.vqc", "-o", "out-prior", "--prior", "run/prior")
    assert result.exit_code == 0, result.output
    with_prior = (tmp_path / "out-prior" / "p0.png").read_bytes()
    assert with_prior == (tmp_path / "out" / "p0.png").read_bytes()
    # --size without --resize takes the run's own mode: the centre window, as evaluate does.
    result = vqtool("encode", "run", photos / "test", "-o", "all.vqc", "--size", "64x64")
    assert result.exit_code == 0, result.output
    assert "resized by native-crop (the run's data.resize)" in result.output
    seen = load_images(loaded.profile.data, Path("data"), "test")
    expected = loaded.model.images_to_codes(seen.contiguous()).numpy()
    assert np.array_equal(read_codes(tmp_path / "all.vqc").codes, expected)


def test_training_on_photos_resumes_bit_identically(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "pics")
    sets = [*TINY, f"data.path={photos}"]
    straight = load_profile("photo", [*sets, "train.steps=6"])
    data_dir = tmp_path / "data"
    run_training(straight, tmp_path / "straight", data_dir)
    run_training(load_profile("photo", [*sets, "train.steps=3"]), tmp_path / "resumed", data_dir)
    run_training(straight, tmp_path / "resumed", data_dir, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["fingerprint"] == b["fingerprint"]
    assert a["data"]["epoch"] >= 2  # 2 batches of 4 from 8 photos: new windows each epoch


def test_photo_profile_is_listed() -> None:
    result = vqtool("profiles")
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("│ photo "))
    assert "own size" in line
    profile = load_profile("photo", ["data.path=x"])
    assert (profile.data.resize, profile.data.scale) == ("native-crop", 1.0)
    assert (profile.model.downsample, profile.model.stages) == (8, 4)
