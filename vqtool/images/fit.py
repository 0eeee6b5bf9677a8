"""How an image of any shape becomes H x W: the modes of `[data] resize` and `encode --resize`.

- "centre-crop": scaled so that it covers H x W (its short side fits), and the centre kept;
- "stretch": resized to H x W, whatever its aspect ratio;
- "random-crop": stored like "centre-crop" at 9/8 of H x W (`stored_size`), from which
  training cuts a different H x W window each epoch, and evaluation and encoding the centre
  one (`centre_offsets`);
- "native-crop": kept at its own pixels (times `[data] scale`, `native_size`), from which
  training cuts a different H x W window each epoch, and evaluation and encoding the centre
  one; an image smaller than H x W is scaled up just enough to cover it.

An image folder's cache holds images at the stored size (`resize_to`); `fit_rgb` gives the
window that evaluation and encoding see.
"""

from __future__ import annotations

from PIL import Image

CROP_MODES = ("centre-crop", "random-crop")
NATIVE_CROP = "native-crop"


def stored_size(size: tuple[int, int], mode: str) -> tuple[int, int]:
    """(Hs, Ws) an image is resized to for `size` (H, W): an eighth more for random crops to
    move in, else `size` itself ("native-crop" keeps each image's own: `native_size`)."""
    h, w = size
    return (h + h // 8, w + w // 8) if mode == "random-crop" else (h, w)


def native_size(
    source: tuple[int, int], out: tuple[int, int], scale: float = 1.0
) -> tuple[int, int]:
    """(h, w) a `source` (h, w) image is kept at for "native-crop" windows of `out` (H, W):
    its own size times `scale` (rounded, at least 1), or, when that is smaller than `out` on
    a side, the least size of its aspect that covers `out` (`cover_size`). Scaled up rather
    than padded: a padded margin would train on stripes that no photo has."""
    h, w = source
    scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
    if scaled[0] >= out[0] and scaled[1] >= out[1]:
        return scaled
    return cover_size(source, out)


def centre_offsets(stored: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the centred `size` window of an image of `stored` size."""
    return (stored[0] - size[0]) // 2, (stored[1] - size[1]) // 2


def cover_size(source: tuple[int, int], out: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a `source` (h, w) image scaled, aspect kept, to just cover `out` (rounded up):
    the least a crop mode needs decoded."""
    (h, w), (out_h, out_w) = source, out
    if out_h * w >= out_w * h:  # the heights limit: the full height is kept
        return out_h, -(-w * out_h // h)
    return -(-h * out_w // w), out_w


def source_box(
    source: tuple[int, int], out: tuple[int, int], mode: str
) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom) of a `source` (h, w) image that becomes `out`
    (h, w): all of it to stretch, else the centred region of `out`'s aspect ratio.

    The side that limits the scale is kept whole, exactly, and the other one found from
    integers: `max(out_h / h, out_w / w)` and back gave 500.00000000000006 for a side of 500,
    a box outside the image, which Pillow refuses.
    """
    (h, w), (out_h, out_w) = source, out
    if mode not in CROP_MODES:
        return 0.0, 0.0, float(w), float(h)
    if out_h * w >= out_w * h:  # the full height; out_w * h / out_h <= w
        box_w, box_h = out_w * h / out_h, float(h)
    else:  # the full width; out_h * w / out_w < h
        box_w, box_h = float(w), out_h * w / out_w
    return (w - box_w) / 2, (h - box_h) / 2, (w + box_w) / 2, (h + box_h) / 2


def resize_to(image: Image.Image, out: tuple[int, int], mode: str) -> Image.Image:
    """An RGB image resized to exactly `out` (H, W) over its `source_box`: Pillow's bicubic
    (antialiased when shrinking)."""
    out_h, out_w = out
    w, h = image.size
    if (h, w) == (out_h, out_w):
        return image
    box = source_box((h, w), (out_h, out_w), mode)
    return image.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box)


def fit_rgb(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """An RGB image at `size` (H, W) as `mode` says: for "random-crop", the centre window of
    the stored image, the one evaluation takes; for "native-crop", the centre window at the
    image's own pixels (scaled up first only when it is smaller than `size`)."""
    if mode == NATIVE_CROP:
        w, h = image.size
        stored = native_size((h, w), size)
        if stored != (h, w):
            image = image.resize((stored[1], stored[0]), Image.Resampling.BICUBIC)
        top, left = centre_offsets(stored, size)
        return image.crop((left, top, left + size[1], top + size[0]))
    stored = stored_size(size, mode)
    image = resize_to(image, stored, mode)
    if stored == size:
        return image
    top, left = centre_offsets(stored, size)
    return image.crop((left, top, left + size[1], top + size[0]))
