"""Image folders as a dataset: splits, sizes, the decode cache (reuse, invalidation, killed
builds), bad input as one clear line, random crops, and training on a folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    make_image_folder,
    make_photos,
    one_error_line,
    png_declaring,
    write_folder_profile,
)
from PIL import Image
from typer.testing import CliRunner, Result

from vqtool.checkpoint import load_checkpoint
from vqtool.cli import app
from vqtool.codes.vqc import read_codes
from vqtool.data import folders
from vqtool.data.cifar10 import load_cifar10
from vqtool.data.datasets import (
    RandomCrops,
    centre_crop,
    ensure_dataset,
    load_images,
    load_training_images,
    windows_by_gather,
    windows_by_slices,
)
from vqtool.data.folders import CACHE_DIR, ensure_cache, split_of
from vqtool.errors import UsageError, WorkError
from vqtool.images.pixels import resize
from vqtool.images.read import read_image
from vqtool.profiles import DataConfig, load_profile
from vqtool.vq.load import load_model
from vqtool.vq.train import run_training


def folder_data(path: Path, **keys: object) -> DataConfig:
    """A [data] section for the image folder at `path` (through the profile's validation)."""
    sets = ["data.dataset=folder", f"data.path={path}"]
    sets += [f"data.{key}={json.dumps(value)}" for key, value in keys.items()]
    return load_profile("ema", sets).data


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def names(n: int, prefix: str = "", ext: str = "png") -> list[str]:
    return [f"{prefix}{i:03d}.{ext}" for i in range(n)]


def test_test_folder_is_the_held_out_split_with_exact_pixels(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pics", names(6, "train/a/") + names(3, "test/b/"))
    data = folder_data(root)  # 32x32 images at image_size 32x32: stored as they are
    train, test = (load_images(data, tmp_path / "data", split) for split in ("train", "test"))
    assert train.shape == (6, 3, 32, 32) and test.shape == (3, 3, 32, 32)
    assert train.dtype == torch.uint8
    for i, name in enumerate(names(3, "test/b/")):
        assert np.array_equal(test[i].numpy(), pixels_of(root / name))  # sorted by path


def test_hash_split_keeps_old_files_where_they_were(tmp_path: Path) -> None:
    before = {rel: split_of(rel, 0.25, False) for rel in names(400, "x/")}
    assert 60 < sum(s == "test" for s in before.values()) < 140
    root = make_image_folder(tmp_path / "pics", names(40, "x/"))
    data = folder_data(root, test_fraction=0.25)
    cache = ensure_cache(data, tmp_path / "data")
    first = {e.rel: split for split, es in cache.files.items() for e in es}
    make_image_folder(tmp_path / "pics", names(60, "y/"), seed=1)  # files added
    cache = ensure_cache(data, tmp_path / "data")
    after = {e.rel: split for split, es in cache.files.items() for e in es}
    assert len(after) == 100 and all(after[rel] == split for rel, split in first.items())
    assert all(after[rel] == before[rel] for rel in first)  # a file's own path decides


def banded(path: Path, height: int, width: int, margin: int) -> Path:
    """A grey image with red side bands `margin` pixels wide."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[:, :margin] = pixels[:, width - margin :] = (255, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_resize_modes_crop_or_stretch_larger_photos(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    for i in range(4):
        banded(root / f"{i}.png", 80, 120, 16)  # 2:3, the bands outside the centre square
    shapes = {}
    for mode in ("centre-crop", "random-crop", "stretch"):
        data = folder_data(root, image_size=[32, 32], resize=mode, test_fraction=0.0)
        images = load_images(data, tmp_path / "data", "train")
        red = (images[:, 0].int() - images[:, 1].int() > 100).any()
        assert images.shape == (4, 3, 32, 32)
        assert bool(red) == (mode == "stretch"), mode
        shapes[mode] = load_training_images(data, tmp_path / "data", 0).images.shape[2:]
    assert shapes == {"centre-crop": (32, 32), "random-crop": (36, 36), "stretch": (32, 32)}


SHAPES = {"square": (500, 500), "portrait": (600, 400), "landscape": (400, 600), "odd": (333, 331)}


def save_shaped(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    """An image of `size` (H, W) in Pillow `mode` (RGB, RGBA, L): a gradient, so crops differ."""
    h, w = size
    pixels = make_photos(1, size, np.random.default_rng(h * w))[0]
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.full((h, w), 128, np.uint8)))
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.mark.parametrize("resize_mode", ["centre-crop", "random-crop", "stretch"])
@pytest.mark.parametrize("image_size", [[32, 32], [64, 64], [32, 48], [48, 32]])
def test_every_shape_of_image_is_stored_at_every_resize_mode(
    resize_mode: str, image_size: list[int], tmp_path: Path
) -> None:
    # "What a newcomer tripped on, second round", item 1: square 500x500 PNGs were left out
    # as unreadable ("box offset can't be negative") at random-crop's stored 72x72.
    root = tmp_path / "pics"
    for shape, size in SHAPES.items():
        for mode, ext in (("RGB", "png"), ("RGBA", "png"), ("L", "png"), ("RGB", "jpg")):
            save_shaped(root / f"{shape}-{mode}.{ext}", size, mode)
    data = folder_data(root, image_size=image_size, resize=resize_mode, test_fraction=0.0)
    cache = ensure_cache(data, tmp_path / "data")
    assert cache.skipped == [] and not any("could not be read" in n for n in cache.notes)
    stored = folders.FolderSettings.from_config(data).stored_size
    assert cache.arrays["train"].shape == (len(SHAPES) * 4, 3, *stored)
    images = load_images(data, tmp_path / "data", "train")
    assert images.shape[2:] == tuple(image_size)
    # Every image keeps its content: the mean colour of a crop or a stretch is near the file's.
    for entry, image in zip(cache.files["train"], images, strict=True):
        source = pixels_of(root / entry.rel).reshape(3, -1).mean(1)
        assert np.abs(image.float().reshape(3, -1).mean(1).numpy() - source).max() < 40


def test_crop_modes_keep_the_centre_and_stretch_keeps_it_all(tmp_path: Path) -> None:
    for name, (h, w) in SHAPES.items():
        path = tmp_path / f"{name}.png"
        pixels = np.full((h, w, 3), 128, np.uint8)
        # A red frame, a sixteenth of the short side: outside a crop of a long side.
        m = min(h, w) // 16
        pixels[:m] = pixels[-m:] = pixels[:, :m] = pixels[:, -m:] = (255, 0, 0)
        Image.fromarray(pixels).save(path)
        for mode in ("centre-crop", "random-crop", "stretch"):
            stored = folders.FolderSettings(tmp_path, (32, 32), mode, 0.0).stored_size
            image = folders.decode_image(path, stored, mode).astype(int)
            red = image[0] - image[1] > 60
            middle = (red.shape[0] // 2, red.shape[1] // 2)
            edges = {"top": bool(red[0, middle[1]]), "left": bool(red[middle[0], 0])}
            if mode == "stretch" or name in ("square", "odd"):
                assert edges == {"top": True, "left": True}, (name, mode)
            else:  # the long side is cut: its frame is gone, the short side's stays
                assert edges == {"top": name == "landscape", "left": name == "portrait"}


def test_a_failure_that_is_not_the_file_is_not_called_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Item 1: a bug in resizing was reported as "could not be read" against good files.
    root = make_image_folder(tmp_path / "pics", names(4))
    make_image_folder(tmp_path / "pics", ["big.png"], size=(50, 40))

    def broken(*args: object) -> object:
        raise ValueError("box offset can't be negative")

    monkeypatch.setattr(folders.fit, "resize_to", broken)
    with pytest.raises(ValueError, match="box offset"):
        ensure_cache(folder_data(root, test_fraction=0.0), tmp_path / "data")
    left = [p.name for p in (tmp_path / "data" / CACHE_DIR).iterdir()]
    assert len(left) == 1 and left[0].endswith(".lock")  # no cache that would hide it
    result = runner.invoke(app, ["train", "--profile", "folder", "--set", f"data.path={root}"])
    assert result.exit_code == 1
    assert "error: unexpected ValueError: box offset" in result.output
    assert "could not be read" not in result.output


def test_jpegs_are_shrunk_while_decoding(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pics", names(3, ext="jpg"), size=(400, 480))
    data = folder_data(root, image_size=[64, 64], test_fraction=0.0)
    images = load_images(data, tmp_path / "data", "train")
    with Image.open(root / "000.jpg") as full:
        reference = np.asarray(full.convert("RGB").resize((77, 64), Image.Resampling.BICUBIC))
    centre = torch.from_numpy(reference[:, 6:70].transpose(2, 0, 1).copy())
    # Draft decoding at 1/4 scale, then resized: close to resizing the full decode.
    assert (images[0].float() - centre.float()).abs().mean() < 6


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pics", names(8, "train/") + names(2, "test/"))
    data, data_dir = folder_data(root), tmp_path / "data"
    first = ensure_cache(data, data_dir)
    assert first.built_s is not None and "decoded 10 images" in first.notes[0]
    again = ensure_cache(data, data_dir)
    assert again.built_s is None and again.notes == []

    changed = root / "train" / "003.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = ensure_cache(data, data_dir)
    assert rebuilt.built_s is not None
    assert int(load_images(data, data_dir, "train")[3].max()) == 0  # the new pixels are seen

    (root / "train" / "000.png").unlink()
    assert ensure_cache(data, data_dir).built_s is not None
    assert load_images(data, data_dir, "train").shape[0] == 7
    assert len(list((data_dir / CACHE_DIR).iterdir())) == 2  # one cache and its lock file


def test_a_cache_is_never_used_for_another_size_or_folder(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pics", names(6, "train/") + names(2, "test/"))
    data_dir = tmp_path / "data"
    small = ensure_cache(folder_data(root), data_dir)
    large = ensure_cache(folder_data(root, image_size=[16, 16]), data_dir)
    assert large.built_s is not None and large.folder != small.folder
    assert large.arrays["train"].shape[2:] == (16, 16)
    shutil.copytree(root, tmp_path / "copy")  # same files, sizes and mtimes
    copy = ensure_cache(folder_data(tmp_path / "copy"), data_dir)
    assert copy.built_s is not None and copy.folder not in (small.folder, large.folder)
    # A manifest moved into another cache's place does not match its settings.
    shutil.rmtree(large.folder)
    shutil.copytree(small.folder, large.folder)
    assert ensure_cache(folder_data(root, image_size=[16, 16]), data_dir).built_s is not None


def test_bad_files_are_skipped_counted_and_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pics", names(5, "ok/"))
    good = (root / "ok" / "000.png").read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "a-empty.jpg").write_bytes(b"")
    (root / "bad" / "b-truncated.png").write_bytes(good[: len(good) // 2])
    (root / "bad" / "c-text.png").write_text("not an image")
    (root / "bad" / "d-huge.png").write_bytes(png_declaring(5000, 5000))
    (root / "notes.txt").write_text("hello")
    data = folder_data(root, test_fraction=0.0)
    notes = ensure_dataset(data, tmp_path / "data")
    skipped = next(n for n in notes if "could not be read" in n)
    assert skipped.startswith("4 of 9 image files could not be read and are left out: ")
    assert "bad/a-empty.jpg (cannot read the image: empty file)" in skipped
    assert "bad/b-truncated.png" in skipped and "bad/c-text.png" in skipped
    assert "and 1 more" in skipped  # the huge one, refused from its header
    assert any("1 non-image file left out: notes.txt" in n for n in notes)
    assert load_images(data, tmp_path / "data", "train").shape[0] == 5
    # The bad files are part of the manifest: the cache is reused, the note repeated.
    cache = ensure_cache(data, tmp_path / "data")
    assert cache.built_s is None and ("bad/d-huge.png", cache.skipped[-1][1]) == cache.skipped[-1]
    assert "image too large" in cache.skipped[-1][1]


def test_a_folder_of_only_bad_files_is_exit_1(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"")
    (root / "b.png").write_bytes(png_declaring(5000, 5000))
    with pytest.raises(WorkError) as excinfo:
        ensure_cache(folder_data(root), tmp_path / "data")
    assert excinfo.value.exit_code == 1
    assert "none of the 2 image files could be read" in excinfo.value.line()
    left = [p.name for p in (tmp_path / "data" / CACHE_DIR).iterdir()]
    assert len(left) == 1 and left[0].endswith(".lock")  # no cache, no build folder


@pytest.mark.parametrize("case", ["empty", "no images", "missing", "a file"])
def test_no_images_is_a_usage_error(case: str, tmp_path: Path) -> None:
    root = tmp_path / "pics"
    if case != "missing" and case != "a file":
        root.mkdir()
    if case == "no images":
        (root / "readme.txt").write_text("hi")
        (root / ".hidden.png").write_bytes(png_declaring(4, 4))
    if case == "a file":
        root.write_text("x")
    with pytest.raises(UsageError) as excinfo:
        load_images(folder_data(root), tmp_path / "data", "train")
    assert excinfo.value.exit_code == 2
    expected = {
        "empty": "no images in the image folder (",
        "no images": "no images in the image folder (1 other files) (",
        "missing": "no such image folder (",
        "a file": "the image folder is a file (",
    }[case]
    assert excinfo.value.line().startswith("error: " + expected)


def test_empty_split_says_how_to_get_one(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pics", names(4))
    with pytest.raises(UsageError, match="no test images.*test/ subfolder"):
        load_images(folder_data(root, test_fraction=0.0), tmp_path / "data", "test")


def test_link_loops_and_unreadable_subfolders_neither_hang_nor_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_image_folder(tmp_path / "pics", names(4, "a/") + names(2, "locked/"))
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # a loop back to the top
    (root / "a" / "self.png").symlink_to(root / "a" / "self.png")  # a link to itself
    (root / "a" / "gone.png").symlink_to(root / "nowhere.png")  # a broken link
    scandir = os.scandir

    def refusing(path: os.PathLike[str] | str = ".") -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(folders.os, "scandir", refusing)
    data = folder_data(root, test_fraction=0.0)
    notes = ensure_dataset(data, tmp_path / "data")
    assert load_images(data, tmp_path / "data", "train").shape[0] == 4
    assert any("1 subfolder could not be listed" in n and "locked" in n for n in notes)
    assert any("2 of 6 image files could not be read" in n for n in notes)


def test_a_killed_build_leaves_no_cache_that_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_image_folder(tmp_path / "pics", names(150))
    data, data_dir = folder_data(root), tmp_path / "data"
    decode = folders.decode_image
    calls = []

    def dying(*args: object) -> np.ndarray:
        calls.append(1)
        if len(calls) == 100:
            raise KeyboardInterrupt  # Ctrl-C halfway through
        return decode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(folders, "decode_image", dying)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(data, data_dir)
    assert [p.name for p in (data_dir / CACHE_DIR).iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(folders, "decode_image", decode)

    # A SIGKILL leaves the hidden build folder behind: never read, removed by the next build.
    good = ensure_cache(data, data_dir)
    stale = good.folder.with_name(f".{good.folder.name}.999999999.tmp")
    shutil.copytree(good.folder, stale)
    shutil.rmtree(good.folder)
    rebuilt = ensure_cache(data, data_dir)
    assert rebuilt.built_s is not None and not stale.exists()
    # A torn array (disk trouble, a half-copied cache) is rebuilt, not read.
    with open(rebuilt.folder / "train.npy", "r+b") as f:
        f.truncate(1000)
    assert ensure_cache(data, data_dir).built_s is not None


def test_random_crops_come_from_seed_and_epoch_only() -> None:
    images = torch.randint(0, 256, (10, 3, 12, 14), dtype=torch.uint8)
    crops = RandomCrops((8, 8), 10, seed=3)
    corners = crops.offsets(0, (12, 14))
    assert corners.shape == (10, 2) and int(corners[:, 0].max()) <= 4 and int(corners.max()) <= 6
    assert torch.equal(corners, RandomCrops((8, 8), 10, seed=3).offsets(0, (12, 14)))
    assert not torch.equal(corners, crops.offsets(1, (12, 14)))
    assert not torch.equal(corners, RandomCrops((8, 8), 10, seed=4).offsets(0, (12, 14)))
    index = torch.tensor([7, 2, 2])
    windows = crops(images, index, 0)
    assert windows.shape == (3, 3, 8, 8)
    for k, i in enumerate(index.tolist()):
        y, x = corners[i].tolist()
        assert torch.equal(windows[k], images[i, :, y : y + 8, x : x + 8])
    assert torch.equal(windows_by_gather(images, index, corners[index], (8, 8)), windows)
    assert torch.equal(windows_by_slices(images, index, corners[index], (8, 8)), windows)
    assert torch.equal(centre_crop(images, (8, 8))[0], images[0, :, 2:10, 3:11])


def test_training_on_a_folder_resumes_bit_identically(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "photos", names(30, "p/", "jpg"), size=(24, 20))
    profile_path = write_folder_profile(tmp_path)
    straight = load_profile(profile_path, ["train.steps=8"])
    assert straight.data.path == str(tmp_path / "photos")  # resolved from the working folder
    data_dir = tmp_path / "data"
    result = run_training(straight, tmp_path / "straight", data_dir)
    assert result.step == 8
    run_training(load_profile(profile_path, ["train.steps=4"]), tmp_path / "resumed", data_dir)
    run_training(straight, tmp_path / "resumed", data_dir, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["fingerprint"] == b["fingerprint"]
    assert a["data"]["epoch"] >= 2  # 8 batches of 8 from about 24 images: new crops each epoch


def test_a_folder_of_the_same_pixels_in_the_same_order_trains_like_cifar10(
    data_dir: Path, tiny_profile: Path, tmp_path: Path
) -> None:
    root = tmp_path / "pngs"
    for split in ("train", "test"):
        for i, image in enumerate(load_cifar10(data_dir, split)):
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / split / f"{i:05d}.png")
    cifar = load_profile(tiny_profile, ["train.steps=4"])
    folder = load_profile(
        tiny_profile, ["train.steps=4", "data.dataset=folder", f"data.path={root}"]
    )
    run_training(cifar, tmp_path / "cifar", data_dir)
    run_training(folder, tmp_path / "folder", tmp_path / "cache")
    a, b = load_checkpoint(tmp_path / "cifar"), load_checkpoint(tmp_path / "folder")
    assert a["fingerprint"] == b["fingerprint"] and a["train_variance"] == b["train_variance"]


# Through the CLI: the shipped `folder` profile from a folder of photos to a comparison.

runner = CliRunner()
SMALL_MODEL = [
    "model.num_hiddens=16",
    "model.num_residual_hiddens=8",
    "model.num_residual_layers=1",
    "model.embedding_dim=8",
    "model.num_embeddings=32",
    "data.batch_size=8",
    "train.log_every=2",
]


def vqtool(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def train_folder(run: str, steps: int, *sets: str) -> Result:
    overrides = [f"--set={s}" for s in [*SMALL_MODEL, f"train.steps={steps}", *sets]]
    return vqtool("train", "--profile", "folder", *overrides, "--run-dir", run)


def test_folder_profile_trains_on_64px_crops_then_evaluate_plot_compare_encode_decode(
    tmp_path: Path,
) -> None:
    photos = make_image_folder(tmp_path / "photos", names(40, "p/", "jpg"), size=(80, 96))
    result = train_folder("run", 4)  # the profile's path = "photos", below the working folder
    assert result.exit_code == 0, result.output
    assert "decoding 40 images into the image cache (once)" in result.output
    assert "into data/folder-cache/photos-64x64-random-crop-" in result.output
    images = load_images(load_model(tmp_path / "run").profile.data, Path("data"), "test")
    assert images.shape[1:] == (3, 64, 64)

    result = vqtool("evaluate", "run", "--split", "test", "--json", "-")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["images"] == images.shape[0] and metrics["bits_per_image"] == 16 * 16 * 5

    result = vqtool("plot", "run", "-o", "figures")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "figures" / "reconstructions.png") as figure:
        assert figure.size[0] > 100
    assert train_folder("run2", 2).exit_code == 0  # the cache is reused
    result = vqtool("compare", "run", "run2", "--json", "-")
    assert result.exit_code == 0, result.output
    assert [row["steps"] for row in json.loads(result.stdout)] == [4, 2]

    # Stretched as asked, not cropped as trained (item 4): the same pixels as `resize` below.
    result = vqtool(
        "encode", "run", photos, "-o", "p.vqc", "--size", "64x64", "--resize", "stretch"
    )
    assert result.exit_code == 0, result.output
    codes = read_codes(tmp_path / "p.vqc")
    assert codes.codes.shape == (40, 16, 16) and codes.names[0] == "p/000"
    result = vqtool("decode", "run", "p.vqc", "-o", "out")
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "run").model
    resized = torch.stack([resize(read_image(photos / n), (64, 64)) for n in names(3, "p/", "jpg")])
    _, recon = model.reconstruct(resized)
    for i in range(3):
        with Image.open(tmp_path / "out" / "p" / f"{i:03d}.png") as png:
            decoded = np.asarray(png).transpose(2, 0, 1)
        assert np.array_equal(decoded, (recon[i] * 255).round().byte().numpy())


def test_folder_profile_trains_on_jpegs_and_square_pngs_leaving_none_out(tmp_path: Path) -> None:
    # Item 1's folder: CIFAR-sized JPEGs and 500x500 PNGs, RGB and RGBA.
    make_image_folder(tmp_path / "photos", names(12, "cifar/", "jpg"))
    save_shaped(tmp_path / "photos" / "logo.png", (500, 500))
    save_shaped(tmp_path / "photos" / "logo-alpha.png", (500, 500), "RGBA")
    save_shaped(tmp_path / "photos" / "banner.png", (500, 500), "RGBA")
    result = train_folder("run", 2)
    assert result.exit_code == 0, result.output
    assert "left out" not in result.output and "could not be read" not in result.output
    (cache,) = (tmp_path / "data" / CACHE_DIR).glob("photos-*")
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["skipped"] == [] and len(manifest["train"]) + len(manifest["test"]) == 15


def test_a_lone_image_held_out_by_the_hash_is_explained_before_decoding(tmp_path: Path) -> None:
    # Item 3: "decoding 1 images", then "no train images ...: put images outside test/"
    # with no test/ folder at all.
    assert split_of("only-18.jpg", 0.1, False) == "test"
    make_image_folder(tmp_path / "photos", ["only-18.jpg"])
    result = train_folder("run", 2)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)  # nothing decoded first: no progress line
    assert line.startswith("error: the image folder has no train images: without a test/ ")
    assert "by a hash of its path below the folder, data.test_fraction = 0.1 of them" in line
    assert "put 0 images in train and 1 in test" in line
    assert "lower data.test_fraction (0 trains on all of them)" in line
    assert list((tmp_path / "data" / CACHE_DIR).glob("photos-*")) == []  # no cache built
    assert not (tmp_path / "run").exists()
    shutil.rmtree(tmp_path / "data")  # built by the run below: decode again, for the message
    result = train_folder("run", 2, "data.test_fraction=0")
    assert result.exit_code == 2
    assert "error: data.batch_size 8 exceeds the 1 training image (" in result.stderr
    assert "decoding 1 image into the image cache (once)" in result.output
    assert "decoded 1 image of " in result.output
    result = train_folder("run", 2, "data.test_fraction=0", "data.batch_size=1")
    assert result.exit_code == 0, result.output
    assert "1 process, 1 image, " in result.output


def test_a_split_without_images_says_how_the_folder_was_split(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pics", names(3, "test/"))
    with pytest.raises(UsageError) as excinfo:
        ensure_cache(folder_data(root), tmp_path / "data", need=("train",))
    assert excinfo.value.line() == (
        "error: the image folder has no train images: its test/ subfolder holds the held-out "
        f"images (3 images) and none lies outside it ({root}): put the training images outside "
        "test/"
    )
    assert not (
        tmp_path / "data" / CACHE_DIR / folders.FolderSettings.from_config(folder_data(root)).key
    ).exists()
    make_image_folder(root, names(2, "train/"))
    for bad in names(2, "train/bad-"):
        (root / bad).write_bytes(b"not an image")
    (root / "train" / "000.png").unlink()
    (root / "train" / "001.png").unlink()
    with pytest.raises(WorkError) as excinfo:
        load_images(folder_data(root), tmp_path / "data", "train")
    assert excinfo.value.exit_code == 1
    assert "no train images: none of its train files could be read (2 files left out in all, "
    assert "the first: train/bad-000.png: cannot read the image" in excinfo.value.line()
    assert load_images(folder_data(root), tmp_path / "data", "test").shape[0] == 3


def test_encode_sees_a_folder_run_s_images_as_evaluation_does(tmp_path: Path) -> None:
    # Item 4: encode --size stretched while training cropped. Now `--resize` (default: the
    # run's data.resize) gives exactly the pixels of the run's dataset at that mode.
    for i, size in enumerate([(40, 56), (56, 40), (48, 48), (20, 30)]):
        save_shaped(tmp_path / "photos" / "test" / f"{i}.png", size, ("RGB", "RGBA")[i % 2])
    make_image_folder(tmp_path / "photos" / "train", names(8), size=(24, 20))
    write_folder_profile(tmp_path)  # 16x16 random crops of "photos"
    result = vqtool(
        "train", "--profile", "folder.toml", "--set", "train.steps=2", "--run-dir", "run"
    )
    assert result.exit_code == 0, result.output
    loaded = load_model(tmp_path / "run")
    for mode in (None, "centre-crop", "random-crop", "stretch"):
        chosen = ["--resize", mode] if mode else []
        result = vqtool("encode", "run", "photos/test", "-o", "t.vqc", "--size", "16x16", *chosen)
        assert result.exit_code == 0, result.output
        data = loaded.profile.data
        if mode is None:
            assert "resized by random-crop (the run's data.resize)" in result.output
        else:
            data = dataclasses.replace(data, resize=mode)
        seen = load_images(data, tmp_path / "data", "test")  # what evaluate would see
        codes = loaded.model.images_to_codes(seen.contiguous())
        assert np.array_equal(read_codes(tmp_path / "t.vqc").codes, codes.numpy()), mode


@pytest.mark.parametrize(
    ("setup", "sets", "code", "message"),
    [
        (
            "photos",
            ["data.image_size=[62,62]"],
            2,
            "error: data.image_size 62x62 is not a multiple of model.downsample",
        ),
        ("empty", [], 2, "error: no images in the image folder ("),
        ("bad", [], 1, "error: none of the 2 image files could be read"),
    ],
)
def test_folder_training_refusals_are_one_line(
    setup: str, sets: list[str], code: int, message: str, tmp_path: Path
) -> None:
    (tmp_path / "photos").mkdir()
    if setup == "photos":
        make_image_folder(tmp_path / "photos", names(4))
    elif setup == "bad":
        (tmp_path / "photos" / "a.jpg").write_bytes(b"")
        (tmp_path / "photos" / "b.png").write_bytes(b"\x89PNG")
    result = train_folder("run", 2, *sets)
    assert result.exit_code == code
    # At most the progress line of the decoding before it.
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(message) and len(lines) <= 2 and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
