"""Images -> codes -> images with the graphs of `vqtool export R -o DIR`, by onnxruntime, numpy
and Pillow alone. Writes codes.vqc (a raw code file, as vqtool encode writes: vqtool decode R
codes.vqc reads it) and NAME-decoded.png for each image.

Usage: python onnx_roundtrip.py DIR IMAGE...   (images of one size; different names)
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

folder, paths = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
model = json.loads((folder / "model.json").read_text())
images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # (N, h, w, 3)
h, w, f = images.shape[1], images.shape[2], model["downsample"]
# Sides up to multiples of f with copies of the last row and column, as vqtool encode pads.
batch = np.pad(images, ((0, 0), (0, -h % f), (0, -w % f), (0, 0)), mode="edge")
batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # (N, 3, H, W) uint8
codes = ort.InferenceSession(str(folder / "encoder.onnx")).run(None, {"images": batch})[0]
decoded = ort.InferenceSession(str(folder / "decoder.onnx")).run(None, {"codes": codes})[0]
for path, image in zip(paths, decoded.transpose(0, 2, 3, 1)[:, :h, :w]):
    Image.fromarray(image).save(f"{path.stem}-decoded.png")

header = {key: model[key] for key in ("checkpoint", "num_embeddings", "embedding_dim")}
header |= {"format": "vqtool-codes", "version": 3 if codes.ndim == 4 else 1}
header |= {"downsample": f, "image_size": list(batch.shape[2:])}
header |= {"stages": codes.shape[1]} if codes.ndim == 4 else {}
with open("codes.vqc", "wb") as out:
    np.savez(
        out,
        header=np.array(json.dumps(header)),
        codes=codes.astype(np.uint16),
        names=np.array([p.stem for p in paths]),
        sizes=np.array([[h, w]] * len(paths), np.int32),
    )
