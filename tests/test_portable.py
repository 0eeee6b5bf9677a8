"""Prior-coded files decode on any machine: the exact coding model's tables, computed in
processes that emulate other machines, are the same as this process's.

The variables act only when set before torch is imported, so each other machine is a
subprocess: ATEN_CPU_CAPABILITY=default (no vector kernels) or avx2 (a CPU without AVX-512),
ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN on such a CPU), MKL_ENABLE_INSTRUCTIONS=SSE4_2 (older BLAS
kernels), and one thread. A float prior's file fails under some of them; an exact one never.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import decoded_pngs
from test_codes_stages import staged_file, staged_prior
from test_entropy import random_codes, random_prior
from test_found_prior import CODING
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes import entropy
from vqtool.codes.tokens import codes_to_tokens
from vqtool.codes.vqc import read_codes
from vqtool.models import exact_prior
from vqtool.models.config import PriorConfig
from vqtool.models.exact_prior import OTHER_MACHINES, ExactForced, ExactPrior, ExactSteps
from vqtool.models.transformer import CodePrior
from vqtool.prior.coding_model import (
    CodingModel,
    derive_coding_model,
    load_coding_model,
    save_coding_model,
)
from vqtool.prior.train import train_prior
from vqtool.profiles import load_prior_profile

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("width", "heads", "length", "num_embeddings", "stages")

# Another machine: decode the words this process wrote, and encode the same codes again.
OTHER_MACHINE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from vqtool.codes import entropy
    from vqtool.prior.coding_model import load_coding_model

    folder = Path(sys.argv[1])
    model = load_coding_model(folder / "coding-model.npz").model
    data = np.load(folder / "coded.npz")
    codes = data["codes"]
    shape = codes.shape
    decoded = entropy.decode_with_prior(data["words"], data["chunks"], model, shape, adapt=True)
    assert np.array_equal(decoded, codes), "decoded other codes"
    again = entropy.encode_with_prior(codes, model, adapt=True)
    np.savez(folder / "again.npz", words=again.words, chunks=again.chunk_words)
    """
)


def elsewhere(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A Python process started with `env` set before torch is imported."""
    full = os.environ | env | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], env=full, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("stages", [1, 3, "windows"])
def test_exact_tables_are_the_same_on_every_emulated_machine(
    stages: int | str, tmp_path: Path
) -> None:
    """Codes coded here decode in every other process to the same codes, and coded there
    give the same words as here (the reverse direction); "windows": grids larger than the
    prior's, coded window by window, their tables adapted to their codes (adapt=True changes
    nothing on the prior's own grids)."""
    if stages == 1:
        prior, codes = random_prior(k=64, grid=(4, 4)), random_codes(300, 64, (4, 4))
    elif stages == "windows":
        prior, codes = random_prior(k=64, grid=(4, 4)), random_codes(12, 64, (7, 9))
    else:
        assert isinstance(stages, int)
        prior, codes = staged_prior(stages), staged_file(stages).codes
    assert prior.exact is not None and prior.exact_fingerprint is not None
    coding = CodingModel(prior.exact, prior.exact_fingerprint, prior.fingerprint, "a" * 64)
    save_coding_model(tmp_path / "coding-model.npz", coding)
    model = load_coding_model(tmp_path / "coding-model.npz").model
    encoded = entropy.encode_with_prior(codes, model, adapt=True)
    assert encoded.chunk_words is not None
    np.savez(tmp_path / "coded.npz", codes=codes, words=encoded.words, chunks=encoded.chunk_words)
    for name, env in OTHER_MACHINES.items():
        done = elsewhere(env, "-c", OTHER_MACHINE, str(tmp_path))
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
        again = np.load(tmp_path / "again.npz")
        assert np.array_equal(again["words"], encoded.words), name
        assert np.array_equal(again["chunks"], encoded.chunk_words), name


@pytest.mark.parametrize("stages", [1, 3])
def test_the_encoders_one_pass_gives_the_step_by_step_tables(stages: int) -> None:
    """The encoder knows every token and computes all positions at once (ExactForced); the
    decoder one position at a time (ExactSteps): the same tables to the bit, the whole
    sequence and a prefix of whole stages alike."""
    if stages == 1:
        prior, codes = random_prior(k=64, grid=(4, 4)), random_codes(37, 64, (4, 4))
        tokens = torch.from_numpy(codes.astype(np.int64)).view(37, -1)
    else:
        prior, codes = staged_prior(stages), staged_file(stages).codes
        tokens = torch.from_numpy(codes_to_tokens(codes, prior.model.num_embeddings // stages))
    assert prior.exact is not None
    model = prior.exact
    tokens = tokens.reshape(len(tokens), -1)
    forced = ExactForced(model, entropy.PRECISION)
    with torch.inference_mode():
        logits = forced.logits(tokens)
        steps = ExactSteps(model, len(tokens), entropy.PRECISION)
        previous = None
        for t in range(model.length):
            table = steps.next(previous)
            assert torch.equal(table, forced.frequencies(logits[:, t])), t
            previous = tokens[:, t]
        first = forced.logits(tokens[:, : model.per_position])
        some = forced.logits(tokens, at=slice(5, model.length - 2))  # its last layer on those
    assert torch.equal(first, logits[:, : model.per_position])
    assert torch.equal(some, logits[:, 5 : model.length - 2])


@pytest.mark.parametrize("grid", [(1, 1), (4, 4)])
def test_the_decoders_unwritten_cache_slots_weigh_nothing(grid: tuple[int, int]) -> None:
    """The decoder attends over every slot of its key and value caches, those not yet written
    masked: with large numbers in them from the start, its tables are still the encoder's,
    for one position and for many."""
    prior, codes = random_prior(k=64, grid=grid), random_codes(9, 64, grid)
    assert prior.exact is not None
    model = prior.exact
    tokens = torch.from_numpy(codes.astype(np.int64)).view(9, -1)
    with torch.inference_mode():
        logits = ExactForced(model, entropy.PRECISION).logits(tokens)
        steps = ExactSteps(model, 9, entropy.PRECISION)
        for cache in steps.keys + steps.values:
            cache.fill_(2.0**20)
        previous = None
        for t in range(model.length):
            table = steps.next(previous)
            assert torch.equal(table, steps.frequencies(logits[:, t])), t
            previous = tokens[:, t]
    encoded = entropy.encode_with_prior(codes, model)
    decoded = entropy.decode_with_prior(encoded.words, encoded.chunk_words, model, codes.shape)
    assert np.array_equal(decoded, codes)


def test_the_stored_model_is_the_derived_one(tmp_path: Path) -> None:
    prior = random_prior()
    assert prior.exact is not None
    codes = torch.from_numpy(random_codes(64).astype(np.int64)).view(64, -1)
    coding = derive_coding_model(prior.model, codes, prior.fingerprint, prior.vq_fingerprint)
    save_coding_model(tmp_path / "m.npz", coding)
    loaded = load_coding_model(tmp_path / "m.npz")
    assert loaded.fingerprint == coding.fingerprint and loaded.prior == prior.fingerprint
    sample = random_codes(40)
    assert np.array_equal(
        entropy.encode_with_prior(sample, loaded.model).words,
        entropy.encode_with_prior(sample, coding.model).words,
    )


def test_the_exact_model_costs_what_the_float_prior_costs() -> None:
    """Bits under the exact tables within 1% of the float prior's on the same codes."""
    prior = random_prior()
    assert prior.exact is not None
    codes = random_codes(300)
    exact = entropy.encode_with_prior(codes, prior.exact).bits.sum()
    float_bits = entropy.encode_with_prior(codes, prior.model).bits.sum()
    assert exact <= 1.01 * float_bits


def test_a_damaged_coding_model_is_one_line(tmp_path: Path) -> None:
    prior = random_prior()
    codes = torch.from_numpy(random_codes(16).astype(np.int64)).view(16, -1)
    coding = derive_coding_model(prior.model, codes, prior.fingerprint, prior.vq_fingerprint)
    path = tmp_path / "m.npz"
    save_coding_model(path, coding)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["head.weight"] = arrays["head.weight"] + 1
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    from vqtool.errors import WorkError

    with pytest.raises(WorkError, match="do not match its fingerprint"):
        load_coding_model(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(WorkError, match="not a readable exact coding model"):
        load_coding_model(path)


@pytest.fixture(scope="module")
def coding_prior(
    trained_run: Path, trained_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An unconditional prior over the session's VQ run, trained for 4 steps."""
    folder = tmp_path_factory.mktemp("portable") / "prior"
    train_prior(trained_run, load_prior_profile("prior-coding", CODING), folder, trained_data_dir)
    return folder


def test_a_file_encoded_here_decodes_elsewhere_and_back(
    trained_run: Path, trained_data_dir: Path, coding_prior: Path, tmp_path: Path
) -> None:
    """Through the command line: `encode --prior P` here, decode on an emulated AVX2 machine
    to the raw file's PNGs; encode on a machine without vector kernels, decode here."""
    prior_run = coding_prior
    runner = CliRunner()
    common = ["encode", str(trained_run), "cifar10:test", "--data-dir", str(trained_data_dir)]
    assert runner.invoke(app, [*common, "-o", "raw.vqc"]).exit_code == 0
    assert runner.invoke(app, ["decode", str(trained_run), "raw.vqc", "-o", "raw"]).exit_code == 0
    result = runner.invoke(app, [*common, "-o", "here.vqc", "--prior", str(prior_run)])
    assert result.exit_code == 0, result.output
    assert (prior_run / "coding-model.npz").is_file()
    decode = ["-m", "vqtool", "decode", str(trained_run)]
    done = elsewhere(OTHER_MACHINES["AVX2 CPU"], *decode, "here.vqc", "-o", "there",
                     "--prior", str(prior_run))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert decoded_pngs(tmp_path / "there") == decoded_pngs(tmp_path / "raw")
    encode = ["-m", "vqtool", *common, "-o", "there.vqc", "--prior", str(prior_run)]
    done = elsewhere(OTHER_MACHINES["no vector kernels"], *encode)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "there.vqc").read_bytes() == (tmp_path / "here.vqc").read_bytes()
    back = ["decode", str(trained_run), "there.vqc", "-o", "back", "--prior", str(prior_run)]
    result = runner.invoke(app, back)
    assert result.exit_code == 0, result.output
    assert decoded_pngs(tmp_path / "back") == decoded_pngs(tmp_path / "raw")
    assert read_codes(tmp_path / "raw.vqc").codes.shape[0] == len(decoded_pngs(tmp_path / "raw"))


GOLDEN_STREAMS = ROOT / "tests" / "golden" / "exact-streams.npz"


def _golden_model() -> ExactPrior:
    """A small 2-stage exact model of 4x4 grids, its head sharpened (so that a table off by one
    count changes the words)."""
    torch.manual_seed(0)
    stages, k = 2, 16
    config = PriorConfig(layers=1, width=32, heads=2)
    model = CodePrior(config, k * stages, (4 * stages, 4), stages)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    offsets = torch.arange(stages).view(1, stages, 1, 1) * k
    calibration = torch.randint(0, k, (64, stages, 4, 4)) + offsets
    return exact_prior.derive(model.eval(), calibration.view(64, -1))


def _golden_cases() -> dict[str, tuple[np.ndarray, bool]]:
    """name -> (codes, whether the tables adapt to them: vqtool.codes.adaptive)."""
    rng = np.random.default_rng(5)
    own = rng.integers(0, 16, (37, 2, 4, 4)).astype(np.uint16)  # chunks of 16: 3 chunks
    windows = rng.integers(0, 16, (3, 2, 6, 9)).astype(np.uint16)
    repeated = rng.choice(np.array([1, 5, 9, 12], np.uint16), (3, 2, 6, 9))  # a photo's few codes
    return {
        "own": (own, False),
        "windows": (windows, False),
        "windows-adapted": (np.concatenate([windows[:1], repeated[1:]]), True),
    }


def _stored_type(name: str) -> str:
    """Scales as they are, whole numbers in the fewest bytes (GELU tables: small integers)."""
    return "<f8" if name.endswith(".scale") else "<i2" if name.endswith(".gelu") else "<i4"


def test_exact_streams_are_the_golden_ones() -> None:
    """The words of the exact coding never change: a stored model (tests/golden, rewritten by
    VQTOOL_REGEN_GOLDEN=1) codes the stored codes, on its own grid and window by window, into
    the stored words, and those words decode to the codes."""
    if os.environ.get("VQTOOL_REGEN_GOLDEN") == "1":
        model = _golden_model()
        arrays = {
            f"model.{name}": t.numpy().astype(_stored_type(name))
            for name, t in exact_prior.tensors(model).items()
        }
        sizes = {f.name: getattr(model, f.name) for f in fields(model) if f.name in SIZES}
        meta = {"sizes": sizes | {"layers": len(model.layers), "grid": list(model.grid or [])}}
        meta["fractions"] = asdict(model.fractions)
        for name, (codes, adapt) in _golden_cases().items():
            encoded = entropy.encode_with_prior(codes, model, chunk_size=16, adapt=adapt)
            arrays |= {f"{name}.words": encoded.words, f"{name}.chunks": encoded.chunk_words}
        np.savez_compressed(GOLDEN_STREAMS, meta=np.array(json.dumps(meta)), **arrays)
    with np.load(GOLDEN_STREAMS, allow_pickle=False) as npz:
        stored = {name: npz[name] for name in npz.files}
    meta = json.loads(str(stored.pop("meta")))
    named = {k[6:]: torch.from_numpy(v) for k, v in stored.items() if k.startswith("model.")}
    model = exact_prior.from_tensors(meta["sizes"], meta["fractions"], named)
    for name, (codes, adapt) in _golden_cases().items():
        words, chunks = stored[f"{name}.words"], stored[f"{name}.chunks"]
        encoded = entropy.encode_with_prior(codes, model, chunk_size=16, adapt=adapt)
        assert np.array_equal(encoded.words, words), name
        assert np.array_equal(encoded.chunk_words, chunks), name
        decoded = entropy.decode_with_prior(
            words, chunks, model, codes.shape, chunk_size=16, adapt=adapt
        )
        assert np.array_equal(decoded, codes), name
    plain = entropy.encode_with_prior(*_golden_cases()["windows-adapted"][:1], model)
    assert len(stored["windows-adapted.words"]) < len(plain.words)  # it pays on repeated codes
