"""Pack a trained run (and the prior in its prior/ folder) as a ready-trained run of the package.

    python scripts/pack_pretrained.py RUN NAME --description TEXT --trained TEXT

writes pretrained/NAME/: the checkpoint without optimizer and RNG state (the same weights, so
the same fingerprint), profile.toml, metrics.jsonl, eval-*.json, rd-*.json and about.toml; for
RUN/prior, its checkpoint (stripped alike), profile.toml, metrics.jsonl, eval-test.json,
coding-model.npz and its test codes compressed (for `vqtool evaluate`), but not the code files
it trained on.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import tomli_w
import torch

from vqtool.checkpoint import save_checkpoint, weights_only
from vqtool.codes.vqc import read_codes, write_codes
from vqtool.pretrained import ABOUT_NAME, PREFIX

ROOT = Path(__file__).resolve().parents[1]
KEPT = ("profile.toml", "metrics.jsonl", "coding-model.npz")


def slim_checkpoint(source: Path, target: Path, vq_checkpoint: str | None = None) -> str:
    """Copy a checkpoint without its training state; returns its fingerprint (unchanged)."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    fmt = payload.pop("format")
    before = payload.pop("fingerprint")
    payload.pop("version")
    payload = weights_only(payload)
    if vq_checkpoint is not None:  # a prior names its VQ run where any installation has it
        payload["vq"]["checkpoint"] = vq_checkpoint
    save_checkpoint(target, payload, fmt=fmt)
    after = torch.load(target, map_location="cpu", weights_only=True)["fingerprint"]
    assert after == before, (source, before, after)
    return after


def pack_folder(source: Path, target: Path, vq_checkpoint: str | None = None) -> None:
    target.mkdir(parents=True)
    slim_checkpoint(source / "checkpoint.pt", target / "checkpoint.pt", vq_checkpoint)
    results = [*source.glob("eval-*.json"), *source.glob("rd-*.json")]
    for path in [source / name for name in KEPT if (source / name).is_file()] + results:
        shutil.copy2(path, target / path.name)
    test_codes = source / "codes-test.vqc"
    if test_codes.is_file():  # unigram-coded: the same codes in a quarter of the bytes
        write_codes(target / test_codes.name, read_codes(test_codes), compress=True)


def pack(run: Path, target: Path, description: str, trained: str) -> Path:
    """`run` (and run/prior) as the ready-trained run `target`, replaced if it exists."""
    if target.exists():
        shutil.rmtree(target)
    pack_folder(run, target)
    if (run / "prior" / "checkpoint.pt").is_file():
        pack_folder(run / "prior", target / "prior", f"{PREFIX}{target.name}/checkpoint.pt")
    about = {"description": description, "trained": trained}
    (target / ABOUT_NAME).write_text(tomli_w.dumps(about), encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--description", required=True)
    parser.add_argument("--trained", required=True, help="how, on what data and machine")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "pretrained", help="default: pretrained/"
    )
    args = parser.parse_args()
    target = pack(args.run, args.out / args.name, args.description, args.trained)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"{target}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
