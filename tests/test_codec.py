"""vqtool.codes.pipeline: encode/decode in memory and through the CLI, exactness
against evaluate, real-photo kinds, folders, and every error path as one line."""

from __future__ import annotations

import dataclasses
import io
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    cifar_names,
    make_cifar_folder,
    one_error_line,
    png_declaring,
    source_env,
    wait_for,
)
from PIL import Image
from torch.nn.utils import parametrize
from typer.testing import CliRunner

from vqtool import files
from vqtool.cli import app
from vqtool.codes import inputs
from vqtool.codes import pipeline as codec
from vqtool.codes.pipeline import decode_indices, encode_images, encode_inputs
from vqtool.codes.vqc import read_codes
from vqtool.data.cifar10 import load_cifar10
from vqtool.images import read as imagefiles
from vqtool.images.pixels import pad_to_multiple, resize
from vqtool.models.vqvae import build_model
from vqtool.vq.evaluate import evaluate_images
from vqtool.vq.load import LoadedModel, load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def loaded(trained_run: Path) -> LoadedModel:
    return load_model(trained_run)


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def encode_test_images(run: Path, data_dir: Path, n: int) -> None:
    """`vqtool encode RUN cifar10:test:N -o c.vqc` in the test's folder; it must succeed."""
    code, output = invoke("encode", run, f"cifar10:test:{n}", "-o", "c.vqc", "--data-dir", data_dir)
    assert code == 0, output


def read_png(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def reference(loaded: LoadedModel, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """evaluate's codes and reconstruction, rounded to 8 bits as decode does."""
    indices, recon = loaded.model.reconstruct(batch)
    return indices, (recon * 255).round().to(torch.uint8)


def save_noise(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    """A smooth photo-like image (gradients and noise) of the given size and Pillow mode."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1)
    pixels = np.clip(base * 200 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# Library: exactly evaluate's reconstruction.


def test_decode_of_encode_is_evaluates_reconstruction(
    loaded: LoadedModel, trained_data_dir: Path
) -> None:
    batch = load_cifar10(trained_data_dir, "test")[:24]
    indices = encode_images(loaded.model, batch)
    decoded = decode_indices(loaded.model, indices)
    ref_indices, ref_images = reference(loaded, batch)
    assert indices.dtype == torch.int64 and indices.shape == (24, 8, 8)
    assert torch.equal(indices, ref_indices)
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, ref_images)
    assert torch.equal(encode_images(loaded.model, batch), indices)  # deterministic


def test_tensor_api_pads_and_checks_types(loaded: LoadedModel) -> None:
    odd = torch.randint(0, 256, (2, 3, 30, 33), dtype=torch.uint8)
    indices = encode_images(loaded.model, odd)
    assert indices.shape == (2, 8, 9)
    assert torch.equal(indices, reference(loaded, pad_to_multiple(odd))[0])
    assert decode_indices(loaded.model, indices).shape == (2, 3, 32, 36)
    with pytest.raises(ValueError, match="uint8"):
        encode_images(loaded.model, odd.float())
    with pytest.raises(ValueError, match="integer"):
        decode_indices(loaded.model, indices.float())


def test_folded_weight_norm_gives_identical_outputs(loaded: LoadedModel) -> None:
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(loaded.model.config, kaiming_init=True)).eval()
    folded = model.folded()
    assert any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    indices = encode_images(model, batch)
    assert torch.equal(encode_images(folded, batch), indices)
    with torch.no_grad():
        assert torch.equal(folded.decode(indices), model.decode(indices))
    assert loaded.model.folded() is loaded.model  # no weight norm: unchanged


def test_encode_streams_batch_by_batch(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        save_noise(tmp_path / "pics" / f"{i}.png", 12, 12, seed=i)
    events: list[str] = []
    real = inputs.read_image
    monkeypatch.setattr(inputs, "read_image", lambda p: events.append("read") or real(p))
    code_file = encode_inputs(
        loaded, ["pics"], tmp_path, batch_size=2, on_progress=lambda d, n: events.append(f"{d}")
    )
    assert events == ["read", "read", "2", "read", "read", "4", "read", "5"]
    assert code_file.codes.shape == (5, 3, 3) and code_file.names == ("0", "1", "2", "3", "4")


# CLI: round trips.


def test_cli_round_trip_is_exact(
    loaded: LoadedModel, trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    code, output = invoke(
        "encode", trained_run, "cifar10:test:40", "-o", "c.vqc", "--data-dir", trained_data_dir
    )
    assert code == 0, output
    assert "wrote c.vqc: 40 images of 32x32" in output
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out", "--grid", "grid.png")
    assert code == 0, output
    assert "wrote 40 PNGs" in output
    originals = load_cifar10(trained_data_dir, "test")[:40]
    ref_indices, ref_images = reference(loaded, originals)
    code_file = read_codes(tmp_path / "c.vqc")
    names = cifar_names(trained_data_dir, "test", 40)
    assert list(code_file.names) == names  # the class, then split and index: 'cat/test-00000'
    assert np.array_equal(code_file.codes, ref_indices.numpy().astype(np.uint16))
    decoded = torch.stack([read_png(tmp_path / "out" / f"{name}.png") for name in names])
    assert torch.equal(decoded, ref_images)
    with np.load(tmp_path / "c.vqc", allow_pickle=False) as npz:
        assert npz["codes"].dtype == np.uint16 and npz["sizes"].tolist() == [[32, 32]] * 40
    with Image.open(tmp_path / "grid.png") as grid:
        # 40 cells of 32 + 2, 7 columns, each image enlarged 3x to pass 512 pixels
        assert grid.size == (7 * 98 + 2, 6 * 98 + 2)
    # Encoding the same images again gives the same codes, to the byte.
    code, output = invoke(
        "encode", trained_run, "cifar10:test:40", "-o", "d.vqc", "--data-dir", trained_data_dir,
        "--batch-size", "7",
    )  # fmt: skip
    assert code == 0, output
    assert (tmp_path / "c.vqc").read_bytes() == (tmp_path / "d.vqc").read_bytes()


def test_thousand_images_decode_to_evaluates_mse(
    loaded: LoadedModel, trained_run: Path, tmp_path: Path
) -> None:
    data = make_cifar_folder(tmp_path / "data", per_batch=4, n_test=1000, seed=3)
    originals = load_cifar10(data, "test")
    expected = evaluate_images(loaded.model, originals, loaded.train_variance)["mse"]
    code, output = invoke("encode", trained_run, "cifar10:test", "-o", "c.vqc", "--data-dir", data)
    assert code == 0, output
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 0, output
    decoded = torch.stack(
        [read_png(tmp_path / "out" / f"{name}.png") for name in cifar_names(data, "test")]
    )
    mse = float((decoded.double() / 255 - originals.double() / 255).pow(2).mean())
    print(f"1,000 images: decoded PNGs' MSE {mse:.6f}, evaluate's {expected:.6f}")  # pytest -s
    assert abs(mse - expected) <= 0.02 * expected, (mse, expected)


@pytest.mark.parametrize(
    ("file", "width", "height", "mode"),
    [
        ("grey.png", 40, 30, "L"),
        ("alpha.png", 37, 29, "RGBA"),
        ("photo.jpg", 64, 48, "RGB"),
        ("wide.png", 451, 300, "RGB"),
        ("big.png", 1000, 872, "RGB"),
    ],
)
def test_photos_come_back_at_their_size_in_rgb(
    file: str, width: int, height: int, mode: str, loaded: LoadedModel, trained_run: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    path = save_noise(tmp_path / file, width, height, mode)
    code, output = invoke("encode", trained_run, path, "-o", "c.vqc")
    assert code == 0, output
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 0, output
    stem = Path(file).stem
    with Image.open(tmp_path / "out" / f"{stem}.png") as decoded:
        assert decoded.size == (width, height) and decoded.mode == "RGB"
        pixels = torch.from_numpy(np.asarray(decoded).copy()).permute(2, 0, 1)
    with Image.open(path) as original:
        rgb = torch.from_numpy(np.asarray(original.convert("RGB")).copy()).permute(2, 0, 1)
    # The model's reconstruction of the padded RGB image (alpha dropped), cropped back.
    indices, recon = reference(loaded, pad_to_multiple(rgb.unsqueeze(0)))
    assert torch.equal(pixels, recon[0, :, :height, :width])
    code_file = read_codes(tmp_path / "c.vqc")
    assert code_file.sizes.tolist() == [[height, width]]
    assert code_file.image_size == ((height + 3) // 4 * 4, (width + 3) // 4 * 4)
    assert np.array_equal(code_file.codes, indices.numpy())


def test_folders_mirror_the_tree_and_mixed_sizes_keep_theirs_or_take_size(
    trained_run: Path, tmp_path: Path
) -> None:
    save_noise(tmp_path / "photos" / "cat" / "0001.png", 451, 300)
    save_noise(tmp_path / "photos" / "dog" / "0002.jpg", 1000, 872)
    save_noise(tmp_path / "photos" / "dog" / "0003.png", 20, 20, "L")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / ".hidden.png").write_bytes(b"")
    code, output = invoke("encode", trained_run, "photos", "-o", "own.vqc")
    assert code == 0, output
    assert "3 images of 3 sizes, each padded to a multiple of 4" in output
    own = read_codes(tmp_path / "own.vqc")
    assert own.image_size is None and own.sizes.tolist() == [[300, 451], [872, 1000], [20, 20]]
    assert [c.shape for c in own.codes] == [(75, 113), (218, 250), (5, 5)]
    code, output = invoke("decode", trained_run, "own.vqc", "-o", "own")
    assert code == 0, output
    with Image.open(tmp_path / "own" / "cat" / "0001.png") as image:
        assert image.size == (451, 300)
    code, output = invoke("encode", trained_run, "photos", "-o", "c.vqc", "--size", "64x64")
    assert code == 0, output
    assert "note: skipped 1 non-image file: " in output and "notes.txt" in output
    code_file = read_codes(tmp_path / "c.vqc")
    assert code_file.names == ("cat/0001", "dog/0002", "dog/0003")
    assert code_file.codes.shape == (3, 16, 16)
    assert code_file.sizes.tolist() == [[64, 64]] * 3
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 0, output
    written = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")
    )
    assert written == ["cat/0001.png", "dog/0002.png", "dog/0003.png"]
    with Image.open(tmp_path / "out" / "dog" / "0002.png") as image:
        assert image.size == (64, 64)


def test_repeated_names_and_odd_sizes(trained_run: Path, tmp_path: Path) -> None:
    save_noise(tmp_path / "a.png", 30, 30)
    save_noise(tmp_path / "sub" / "a.png", 31, 29, seed=1)  # also pads to 32x32
    code, output = invoke("encode", trained_run, "a.png", "a.png", "sub", "-o", "c.vqc")
    assert code == 0, output
    code_file = read_codes(tmp_path / "c.vqc")
    assert code_file.names == ("a", "a-2", "a-3")
    assert code_file.sizes.tolist() == [[30, 30], [30, 30], [29, 31]]
    assert code_file.image_size == (32, 32)
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 0, output
    with Image.open(tmp_path / "out" / "a-3.png") as image:
        assert image.size == (31, 29)


def test_decode_refuses_a_symlink_out_of_the_folder(trained_run: Path, tmp_path: Path) -> None:
    save_noise(tmp_path / "pics" / "cat" / "x.png", 8, 8)
    assert invoke("encode", trained_run, "pics", "-o", "c.vqc")[0] == 0
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cat").symlink_to(tmp_path / "elsewhere")
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 1 and "outside the output folder" in one_error_line(output)
    assert not list((tmp_path / "elsewhere").iterdir())


# CLI: every error path is one line with the documented exit code, and writes nothing.


@pytest.mark.parametrize(
    ("case", "exit_code", "message"),
    [
        ("zero-byte png", 1, "empty file"),
        ("truncated png", 1, "cannot read the image"),
        ("text named png", 1, "not an image format"),
        ("40000x40000 png", 2, "image too large"),
        ("5000x5000 png", 2, "image too large"),
        ("zero-byte png in folder", 1, "empty file"),
        ("bomb without extension in folder", 2, "image too large"),
    ],
)
def test_hostile_images(
    case: str, exit_code: int, message: str, trained_run: Path, tmp_path: Path
) -> None:
    target = tmp_path / "bad.png"
    if case == "zero-byte png":
        target.write_bytes(b"")
    elif case == "truncated png":
        good = save_noise(tmp_path / "good.png", 64, 64).read_bytes()
        target.write_bytes(good[: len(good) // 2])
    elif case == "text named png":
        target.write_text("hello")
    elif case == "40000x40000 png":
        target.write_bytes(png_declaring(40000, 40000))
    elif case == "5000x5000 png":
        target.write_bytes(png_declaring(5000, 5000))
    elif case == "zero-byte png in folder":
        save_noise(tmp_path / "pics" / "ok.png", 8, 8)
        (tmp_path / "pics" / "z.png").write_bytes(b"")
        target = tmp_path / "pics"
    else:
        save_noise(tmp_path / "pics" / "ok.png", 8, 8)
        (tmp_path / "pics" / "bomb").write_bytes(png_declaring(40000, 40000))
        target = tmp_path / "pics"
    code, output = invoke("encode", trained_run, target, "-o", "c.vqc")
    assert code == exit_code, output
    assert message in one_error_line(output)
    assert not (tmp_path / "c.vqc").exists() and not list(tmp_path.glob(".c.vqc*"))


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["missing.png", "-o", "c.vqc"], 2, "no such image file or folder"),
        (["cifar10:bogus", "-o", "c.vqc"], 2, "unknown dataset input"),
        (["cifar10:test:0", "-o", "c.vqc"], 2, "asks for 0 images"),
        (["cifar10:test:41", "-o", "c.vqc"], 2, "the test split has 40"),
        (["cifar10:test", "-o", "c.vqc", "--size", "big"], 2, "bad size"),
        (["cifar10:test", "-o", "c.vqc", "--batch-size", "0"], 2, "batch-size"),
        (["cifar10:test"], 2, "-o"),
        (["cifar10:test", "-o", "."], 2, "the output is a folder"),
        (["empty", "-o", "c.vqc"], 2, "no images in this folder"),
    ],
)
def test_encode_errors(
    args: list[str], exit_code: int, message: str, trained_run: Path, trained_data_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    code, output = invoke("encode", trained_run, *args, "--data-dir", trained_data_dir)
    assert code == exit_code, output
    assert message in one_error_line(output)
    assert not (tmp_path / "c.vqc").exists()


def test_encode_without_data_or_run(trained_run: Path, tmp_path: Path) -> None:
    code, output = invoke(
        "encode", trained_run, "cifar10:test", "-o", "c.vqc", "--data-dir", "nodata"
    )
    assert code == 1 and "vqtool download" in one_error_line(output)
    code, output = invoke("encode", "no-run", "cifar10:test", "-o", "c.vqc")
    assert code == 2 and "no such run folder" in one_error_line(output)
    if not torch.cuda.is_available():
        code, output = invoke("encode", trained_run, "x.png", "-o", "c.vqc", "--device", "cuda")
        assert code == 2 and "CUDA" in one_error_line(output)


def test_decode_errors(trained_run: Path, trained_data_dir: Path, tmp_path: Path) -> None:
    encode_test_images(trained_run, trained_data_dir, 2)
    (tmp_path / "file").write_text("in the way")
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "file")
    assert code == 2 and "not a folder" in one_error_line(output)
    first, second = cifar_names(trained_data_dir, "test", 2)
    (tmp_path / "out" / f"{second}.png").mkdir(parents=True)
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 2 and "a folder is in the way" in one_error_line(output)
    assert not (tmp_path / "out" / f"{first}.png").exists()
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "ok", "--grid", "out")
    assert code == 2 and "the grid is a folder" in one_error_line(output)
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "ok", "--batch-size", "-1")
    assert code == 2 and not (tmp_path / "ok").exists()


def test_pixel_budget_bounds_batches() -> None:
    assert list(codec.batch_ranges(5, 2, 1024)) == [(0, 2), (2, 4), (4, 5)]
    assert list(codec.batch_ranges(3, 256, 1000 * 872)) == [(0, 1), (1, 2), (2, 3)]
    assert len(list(codec.batch_ranges(10_000, 256, 1024))) == 40


def test_decode_into_a_new_folder_appears_whole(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    encode_test_images(trained_run, trained_data_dir, 12)
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "new/sub")
    assert code == 0, output
    assert len(list((tmp_path / "new" / "sub").rglob("*.png"))) == 12
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["sub"]  # no staging left
    umask = files.current_umask()
    assert (tmp_path / "new" / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
    pngs = list((tmp_path / "new/sub").rglob("*.png"))
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in pngs)
    # Into the folder that now exists: each PNG replaced through a temp name of its own.
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "new/sub")
    assert code == 0, output
    found = (tmp_path / "new" / "sub").rglob("*")
    assert sorted(
        p.relative_to(tmp_path / "new" / "sub").as_posix() for p in found if p.is_file()
    ) == sorted(f"{name}.png" for name in cifar_names(trained_data_dir, "test", 12))


@pytest.mark.parametrize("exists", [False, True])
def test_a_failed_decode_leaves_no_png_and_no_temp_file(
    trained_run: Path,
    trained_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exists: bool,
) -> None:
    encode_test_images(trained_run, trained_data_dir, 12)
    if exists:
        (tmp_path / "out").mkdir()
    calls = []

    def full_disk(write: codec.Writer) -> codec.Writer:
        def writer(path: Path, data: bytes, mode: int) -> None:
            calls.append(path)
            if len(calls) > 5:
                raise OSError(28, "No space left on device")
            write(path, data, mode)

        return writer

    monkeypatch.setattr(codec, "_write_new_file", full_disk(codec._write_new_file))
    monkeypatch.setattr(codec, "write_file", full_disk(codec.write_file))
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 1 and "No space left" in one_error_line(output)
    if exists:  # the PNGs written before the failure are whole; no temp file is left
        left = list((tmp_path / "out").rglob("*"))
        names = [p.name for p in left if p.is_file()]
        assert all(n.endswith(".png") and not n.startswith(".") for n in names) and len(names) <= 5
        assert all(any(p.iterdir()) for p in left if p.is_dir())  # no class folder left empty
    else:  # the new folder never appeared, and its staging folder is gone
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.vqc"]


def test_sigterm_during_decode_leaves_nothing(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    encode_test_images(trained_run, trained_data_dir, 40)
    # The real command, with each PNG write slowed down so that the signal lands mid-way.
    script = (
        "import sys, time\n"
        "from vqtool import cli\nfrom vqtool.codes import pipeline as codec\n"
        "write, started = codec._write_new_file, sys.argv[1]\n"
        "def slow(path, data, mode):\n"
        "    write(path, data, mode)\n"
        "    open(started, 'a').close()\n"
        "    time.sleep(0.2)\n"
        "codec._write_new_file = slow\n"
        "sys.argv = ['vqtool', *sys.argv[2:]]\n"
        "cli.main()\n"
    )
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(started), "decode", str(trained_run), "c.vqc",
         "-o", "out"],
        cwd=tmp_path, env=source_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(started, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "interrupted (SIGTERM)" in stderr.decode() and "Traceback" not in stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.vqc", "started"]


def test_output_paths_are_checked_before_any_work(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    encode_test_images(trained_run, trained_data_dir, 3)
    (tmp_path / "afile").write_text("a file")
    cases = [
        (["encode", trained_run, "cifar10:test:3", "-o", "afile/x.vqc"], "a file is in the way"),
        (["decode", trained_run, "c.vqc", "-o", "afile/sub"], "a file is in the way"),
        (
            ["decode", trained_run, "c.vqc", "-o", "out", "--grid", "afile/g.png"],
            "a file is in the way",
        ),
        (
            ["encode", trained_run, "cifar10:test:3", "-o", "x.vqc", "--device", "gpu"],
            "unknown device",
        ),
    ]
    for args, message in cases:
        code, output = (
            invoke(*args, "--data-dir", trained_data_dir) if args[0] == "encode" else invoke(*args)
        )
        assert code == 2 and message in one_error_line(output), (args, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "c.vqc"]


def test_a_grid_that_cannot_be_written_leaves_no_new_folder(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode_test_images(trained_run, trained_data_dir, 3)

    def full(path: Path, write: object, what: str, fix: str = "") -> None:
        raise codec.WorkError(f"could not write {what}: No space left on device", path, fix)

    monkeypatch.setattr(codec, "save_or_fail", full)
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out", "--grid", "g.png")
    assert code == 1 and "could not write the grid" in one_error_line(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.vqc"]


def test_missing_folders_of_output_files_are_made(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    code, output = invoke(
        "encode", trained_run, "cifar10:test:3", "-o", "new/c.vqc", "--data-dir", trained_data_dir
    )
    assert code == 0, output
    code, output = invoke("decode", trained_run, "new/c.vqc", "-o", "out", "--grid", "g/h/grid.png")
    assert code == 0, output
    assert (tmp_path / "g" / "h" / "grid.png").is_file()


# Issue 11, items 2 and 3: phone photos and damaged images in folders.


def save_big_jpeg(path: Path, width: int, height: int) -> Path:
    """A smooth width x height JPEG, made quickly (no per-pixel noise)."""
    small = np.asarray(Image.radial_gradient("L").resize((64, 48)))
    rgb = np.stack([small, small[::-1], np.full_like(small, 90)], axis=-1)
    Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=85)
    return path


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose header (SOF0) declares width x height pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_phone_photo_is_shrunk_while_it_is_read(trained_run: Path, tmp_path: Path) -> None:
    # Item 2: a 24 MP JPEG with --size 64x64 used to exit 2 ("image too large").
    photo = save_big_jpeg(tmp_path / "huge.jpg", 6000, 4000)
    code, output = invoke("encode", trained_run, photo, "-o", "h.vqc")
    assert code == 2
    line = one_error_line(output)
    assert "image too large" in line and "--size" in line
    code, output = invoke("encode", trained_run, photo, "-o", "h.vqc", "--size", "64x64")
    assert code == 0, output
    code_file = read_codes(tmp_path / "h.vqc")
    assert code_file.codes.shape == (1, 16, 16) and code_file.sizes.tolist() == [[64, 64]]
    # Decoded at 1/8 scale (750x500, the smallest that keeps twice 64x64), not at 24 MP.
    image, height, width = imagefiles._open(photo, (64, 64))
    assert image.size == (750, 500) and (height, width) == (4000, 6000)
    image.close()
    shrunk = imagefiles.read_resized(photo, (64, 64))
    with Image.open(photo) as full:
        whole = np.asarray(full.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC))
    assert shrunk.shape == (3, 64, 64)
    assert np.abs(shrunk.permute(1, 2, 0).numpy().astype(int) - whole).mean() < 2


def test_encode_resize_fits_as_the_run_trained_unless_told(
    loaded: LoadedModel, trained_run: Path, tmp_path: Path
) -> None:
    # "What a newcomer tripped on, second round", item 4: `encode --size 64x64` stretched a
    # 400x600 photo that training would have cropped.
    assert loaded.profile.data.resize == "centre-crop"  # a CIFAR-10 run: the profile's default
    photo = save_noise(tmp_path / "photo.png", 400, 600)
    pixels = imagefiles.read_image(photo)  # (3, 600, 400)
    codes = {}
    for mode in (None, "centre-crop", "stretch", "random-crop", "native-crop"):
        chosen = ["--resize", mode] if mode else []
        code, output = invoke(
            "encode", trained_run, photo, "-o", "c.vqc", "--size", "64x64", *chosen
        )
        assert code == 0, output
        said = f"resized by {mode}" if mode else "resized by centre-crop (the run's data.resize)"
        assert f"wrote c.vqc: 1 image of 64x64 as 16x16 codes of 32, {said}" in output
        codes[mode] = read_codes(tmp_path / "c.vqc").codes[0]
        fitted = resize(pixels, (64, 64), mode or "centre-crop")
        assert np.array_equal(codes[mode], loaded.model.images_to_codes(fitted[None])[0].numpy())
    assert np.array_equal(codes[None], codes["centre-crop"])
    assert not np.array_equal(codes["centre-crop"], codes["stretch"])
    # The geometry: the centre square, all of it, or the centre 64x64 of that square at 72x72.
    square = pixels[:, 100:500]
    near = {
        "centre-crop": resize(square, (64, 64)),
        "stretch": resize(pixels, (64, 64)),  # the default of the function: what encode did
        "random-crop": resize(square, (72, 72))[:, 4:68, 4:68],
    }
    for mode, expected in near.items():
        got = resize(pixels, (64, 64), mode)
        assert (got.float() - expected.float()).abs().mean() < 2, mode  # Pillow's box edges
    # native-crop: the centre 64x64 of the photo's own pixels, exactly.
    assert torch.equal(resize(pixels, (64, 64), "native-crop"), pixels[:, 268:332, 168:232])


def test_encode_resize_refusals(trained_run: Path, tmp_path: Path) -> None:
    save_noise(tmp_path / "a.png", 30, 20)
    code, output = invoke("encode", trained_run, "a.png", "-o", "c.vqc", "--resize", "stretch")
    assert code == 2
    assert one_error_line(output) == (
        "error: --resize needs --size (--resize): add --size HxW (e.g. --size 64x64); without it, "
        "images keep their own size"
    )
    code, output = invoke("encode", trained_run, "a.png", "-o", "c.vqc", "--size", "32x32",
                          "--resize", "squash")  # fmt: skip
    assert code == 2
    assert one_error_line(output) == (
        "error: unknown resize mode 'squash' (--resize): use centre-crop, random-crop, "
        "native-crop, stretch"
    )
    assert not (tmp_path / "c.vqc").exists()
    result = runner.invoke(app, ["encode", "--help"])
    assert result.exit_code == 0
    assert "--resize" in result.output and "MODE" in result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert "Default: the run's data.resize, so that encoding sees images as training did." in flat


def test_other_large_images_are_decoded_whole_within_a_bound(
    trained_run: Path, tmp_path: Path
) -> None:
    # Item 2: formats without draft decoding are read whole up to 8192x8192 to be shrunk.
    ramp = np.linspace(0, 255, 5000, dtype=np.uint8)
    Image.fromarray(np.broadcast_to(ramp, (4000, 5000))).save(
        tmp_path / "pano.png", compress_level=1
    )
    code, output = invoke("encode", trained_run, "pano.png", "-o", "p.vqc", "--size", "32x40")
    assert code == 0, output
    assert read_codes(tmp_path / "p.vqc").sizes.tolist() == [[32, 40]]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("bomb.jpg", jpeg_declaring(20000, 15000)),  # 300 MP: no camera makes it
        ("bomb.png", png_declaring(10000, 10000)),  # 100 MP of PNG would be decoded whole
        ("vast.png", png_declaring(40000, 40000)),
    ],
)
def test_images_too_large_even_to_shrink_are_refused(
    name: str, data: bytes, trained_run: Path, tmp_path: Path
) -> None:
    (tmp_path / name).write_bytes(data)
    for size in ([], ["--size", "64x64"]):
        code, output = invoke("encode", trained_run, name, "-o", "c.vqc", *size)
        assert code == 2, output
        line = one_error_line(output)
        assert "image too large" in line and "even to shrink it" in line and "--size" not in line
    assert not (tmp_path / "c.vqc").exists()


def damaged_folder(tmp_path: Path) -> Path:
    """photos/: three good PNGs, a truncated PNG, a text file named .png, and notes.txt."""
    for name in ("a", "c", "e"):
        save_noise(tmp_path / "photos" / f"{name}.png", 12, 12, seed=ord(name))
    good = save_noise(tmp_path / "b.png", 12, 12).read_bytes()
    (tmp_path / "photos" / "b.png").write_bytes(good[: len(good) // 2])  # pixel data cut
    (tmp_path / "photos" / "d.png").write_text("not a picture")  # no image header
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    return tmp_path / "photos"


def test_damaged_images_in_a_folder_are_skipped_and_counted(
    trained_run: Path, tmp_path: Path
) -> None:
    # Item 3: one damaged PNG among good images used to stop the whole folder.
    folder = damaged_folder(tmp_path)
    code, output = invoke("encode", trained_run, folder, "-o", "c.vqc")
    assert code == 0, output
    assert f"note: skipped {folder / 'b.png'}: cannot read the image" in output
    assert f"note: skipped {folder / 'd.png'}: cannot read the image" in output
    assert "note: skipped 2 damaged images" in output and "notes.txt" in output
    assert read_codes(tmp_path / "c.vqc").names == ("a", "c", "e")
    # --strict: any skip is an error, and nothing is written.
    (tmp_path / "c.vqc").unlink()
    code, output = invoke("encode", trained_run, folder, "-o", "c.vqc", "--strict")
    assert code == 1 and "cannot read the image" in one_error_line(output)
    (folder / "b.png").unlink()
    (folder / "d.png").unlink()
    code, output = invoke("encode", trained_run, folder, "-o", "c.vqc", "--strict")
    assert code == 1 and "notes.txt" in one_error_line(output)
    assert not (tmp_path / "c.vqc").exists()


def test_a_folder_of_damaged_images_and_a_damaged_file_named_alone_fail(
    trained_run: Path, tmp_path: Path
) -> None:
    folder = damaged_folder(tmp_path)
    for name in ("a", "c", "e"):
        (folder / f"{name}.png").unlink()
    code, output = invoke("encode", trained_run, folder, "-o", "c.vqc")
    assert code == 1 and "every image is damaged" in one_error_line(output)
    save_noise(tmp_path / "good.png", 12, 12)
    code, output = invoke("encode", trained_run, "good.png", folder / "b.png", "-o", "c.vqc")
    assert code == 1 and "b.png" in one_error_line(output)
    assert not (tmp_path / "c.vqc").exists()


def test_encode_reports_the_real_sizes(trained_run: Path, tmp_path: Path) -> None:
    # Issue 11, item 7: "1 images of 300x452" for a 451-wide image, --size 63x63 as 64x64.
    save_noise(tmp_path / "wide.png", 451, 300)
    code, output = invoke("encode", trained_run, "wide.png", "-o", "c.vqc")
    assert code == 0, output
    assert "wrote c.vqc: 1 image of 300x451 (padded to 300x452) as 75x113 codes of 32" in output
    code, output = invoke("encode", trained_run, "wide.png", "-o", "c.vqc", "--size", "63x63")
    assert code == 0 and "1 image of 63x63 (padded to 64x64) as 16x16 codes" in output
    save_noise(tmp_path / "odd" / "a.png", 30, 30)
    save_noise(tmp_path / "odd" / "b.png", 31, 29)
    code, output = invoke("encode", trained_run, "odd", "-o", "c.vqc")
    assert code == 0 and "2 images of mixed sizes, padded to 32x32, as 8x8 codes" in output
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 0 and "wrote 2 PNGs" in output
    code, output = invoke("encode", trained_run, "odd/a.png", "-o", "c.vqc")
    assert code == 0 and "1 image of 30x30 (padded to 32x32)" in output
    code, output = invoke("decode", trained_run, "c.vqc", "-o", "out")
    assert code == 0 and "wrote 1 PNG to" in output
