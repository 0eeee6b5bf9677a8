"""Where colours change between an image and its decoded PNG: the pipeline or the model.

    python benchmarks/colour_check.py --run R [--data-dir data]

The pipeline (reading, resizing, padding, the model's pixel convention, the PNG writer) is
checked for exactness on a grey ramp and saturated colours; then the same images go through
the run's model (decode(encode(x)), as `vqtool encode` and `decode` do) and the mean change
per channel is printed, beside the model's change on CIFAR-10 test images in colour and made
grey (in-domain content). A grey image has R = G = B, so `tint` (the decoded image's mean R - G
and B - G) is the colour the model adds.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vqtool.codes.pipeline import decode_indices, encode_images
from vqtool.data.cifar10 import default_data_dir, load_cifar10
from vqtool.images.pixels import pad_to_multiple
from vqtool.images.png import png_bytes
from vqtool.images.read import read_image, read_resized
from vqtool.models.vqvae import VQVAE
from vqtool.vq.load import load_model


def test_images() -> dict[str, np.ndarray]:
    """uint8 (64, 64, 3) images: a grey ramp, a green disc with a red square on white, and
    four saturated patches."""
    yy, xx = np.mgrid[0:64, 0:64]
    grey = (40 + 170 * (xx + yy) / 126).round().astype(np.uint8)
    logo = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(logo)
    draw.ellipse((8, 8, 56, 56), fill=(0, 200, 0))
    draw.rectangle((24, 24, 40, 40), fill=(255, 0, 0))
    patches = np.zeros((64, 64, 3), np.uint8)
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        patches[(i // 2) * 32 : (i // 2 + 1) * 32, (i % 2) * 32 : (i % 2 + 1) * 32] = colour
    return {
        "grey ramp": np.stack([grey] * 3, axis=-1),
        "logo": np.array(logo),
        "patches": patches,
    }


def pipeline_is_exact(images: dict[str, np.ndarray], folder: Path) -> dict[str, bool]:
    """Each pipeline step on the test images (and on every 8-bit value), exact or not."""
    checks = {}
    for name, image in images.items():
        path = folder / f"{name}.png"
        Image.fromarray(image).save(path)
        read = read_image(path).permute(1, 2, 0).numpy()
        checks[f"read {name}"] = np.array_equal(read, image)
        written = np.asarray(Image.open(io.BytesIO(png_bytes(np.ascontiguousarray(image)))))
        checks[f"PNG writer, {name}"] = np.array_equal(written, image)
    grey_path = folder / "grey.png"
    Image.fromarray(images["grey ramp"][..., 0], "L").save(grey_path)
    shrunk = read_resized(grey_path, (48, 40))
    checks["grey (mode L) resized stays grey"] = bool((shrunk == shrunk[:1]).all())
    ramp = torch.from_numpy(images["grey ramp"]).permute(2, 0, 1)
    padded = pad_to_multiple(ramp[:, :61, :63])
    checks["padding keeps pixels"] = torch.equal(padded[:, :61, :63], ramp[:, :61, :63])
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    unit = VQVAE.to_input(values, "cpu").add(0.5).clamp(0.0, 1.0)
    checks["pixel convention round trip"] = torch.equal(
        unit.mul(255.0).round().to(torch.uint8), values
    )
    return checks


def change(before: np.ndarray, after: np.ndarray, grey: bool = False) -> str:
    """Mean after - before per channel, mean |difference|, and for a grey `before` the tint of
    `after` (its mean R - G and B - G)."""
    d = (after.astype(np.float64) - before).reshape(-1, 3)
    text = (
        f"R {d[:, 0].mean():+7.2f} G {d[:, 1].mean():+7.2f} B {d[:, 2].mean():+7.2f}  "
        f"|d| {np.abs(d).mean():6.2f}"
    )
    if grey:
        out = after.reshape(-1, 3).astype(np.float64)
        tint = (out[:, 0] - out[:, 1]).mean(), (out[:, 2] - out[:, 1]).mean()
        text += f"  tint R-G {tint[0]:+6.2f} B-G {tint[1]:+6.2f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder or checkpoint")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--test-images", type=int, default=1000)
    args = parser.parse_args()
    images = test_images()
    with tempfile.TemporaryDirectory() as folder:
        for check, exact in pipeline_is_exact(images, Path(folder)).items():
            print(f"pipeline: {check}: {'exact' if exact else 'CHANGED'}")
    model = load_model(args.run).model.folded()

    def through(batch: torch.Tensor) -> np.ndarray:  # uint8 (B, 3, H, W) -> (B, H, W, 3)
        return decode_indices(model, encode_images(model, batch)).permute(0, 2, 3, 1).numpy()

    print("model: decoded minus input, mean per channel (8-bit levels)")
    for name, image in images.items():
        decoded = through(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0))[0]
        if name == "grey ramp":
            print(f"  {name:40s} {change(image, decoded, grey=True)}")
            continue
        for colour in np.unique(image.reshape(-1, 3), axis=0):
            mask = (image == colour).all(axis=-1)
            came_back = decoded[mask].mean(axis=0)
            shown = (
                f"{tuple(int(c) for c in colour)} -> {tuple(round(float(c)) for c in came_back)}"
            )
            print(f"  {name + ': ' + shown:40s} {change(image[mask], decoded[mask])}")
    test = load_cifar10(args.data_dir, "test")[: args.test_images]
    grey = (0.299 * test[:, 0] + 0.587 * test[:, 1] + 0.114 * test[:, 2]).round()
    greyed = grey.to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    for name, batch in ((f"CIFAR-10 test ({len(test)})", test), ("the same, made grey", greyed)):
        before = batch.permute(0, 2, 3, 1).numpy()
        print(f"  {name:40s} {change(before, through(batch), grey=batch is greyed)}")


if __name__ == "__main__":
    main()
