"""vqtool.data.cifar10: download (local, file://, HTTP), every failure path, validation, loading."""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    BATCHES_DIR,
    cifar_batch_blobs,
    cifar_members,
    closed_port,
    file_member,
    make_cifar_archive,
    make_cifar_folder,
    make_images,
    py2_batch_pickle,
    write_tar,
)

from vqtool.data.cifar10 import (
    CIFAR10_MD5,
    TRAIN_FILES,
    DownloadResult,
    cifar10_present,
    default_data_dir,
    download_cifar10,
    load_cifar10,
    load_cifar10_labels,
    validate_cifar10,
)
from vqtool.errors import UsageError, WorkError


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def expect_clean_failure(
    tmp_path: Path, run: Callable[[Path], object], error: type[Exception] = WorkError
) -> str:
    """Run `run(data_dir)` on a data_dir that does not exist yet; it must fail and leave no
    trace: no data_dir, no temporary file, nothing else written under tmp_path (the cwd)."""
    data_dir = tmp_path / "data"
    before = snapshot(tmp_path)
    with pytest.raises(error) as info:
        run(data_dir)
    assert not data_dir.exists()
    assert snapshot(tmp_path) == before
    line = info.value.line()  # type: ignore[attr-defined]
    assert line.startswith("error: ") and "\n" not in line
    return line


def test_local_archive_no_verify_then_already_present(tmp_path: Path, cifar_archive: Path):
    calls: list[tuple[int, int | None]] = []
    data_dir = tmp_path / "data"
    result = download_cifar10(
        data_dir,
        source=str(cifar_archive),
        verify=False,
        on_progress=lambda d, t: calls.append((d, t)),
    )
    size = cifar_archive.stat().st_size
    assert result == DownloadResult(data_dir / BATCHES_DIR, already_present=False)
    assert os.listdir(data_dir) == [BATCHES_DIR]  # no temporary file left beside it
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    validate_cifar10(result.folder)
    assert cifar10_present(data_dir)

    again = download_cifar10(data_dir, source=str(cifar_archive), verify=False)
    assert again.already_present and again.folder == result.folder


def test_already_present_needs_no_source(data_dir: Path):
    unreachable = f"http://127.0.0.1:{closed_port()}/cifar.tar.gz"
    assert download_cifar10(data_dir, source=unreachable).already_present


def test_http_with_right_md5(tmp_path: Path, cifar_archive: Path, http_server):
    shutil.copy(cifar_archive, http_server.root / "c.tar.gz")
    data_dir = tmp_path / "nested" / "data"
    result = download_cifar10(
        data_dir, source=http_server.url("c.tar.gz"), md5=md5_of(cifar_archive).upper()
    )
    assert not result.already_present
    assert load_cifar10(data_dir, "test").shape == (40, 3, 32, 32)
    assert os.listdir(data_dir) == [BATCHES_DIR]


def test_file_url(tmp_path: Path, cifar_archive: Path):
    result = download_cifar10(tmp_path / "data", source=cifar_archive.as_uri(), verify=False)
    assert cifar10_present(result.folder.parent)


def test_other_source_is_checked_against_official_md5(tmp_path: Path, cifar_archive: Path):
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, source=str(cifar_archive)))
    assert f"checksum mismatch: got {md5_of(cifar_archive)}, expected {CIFAR10_MD5}" in line
    assert "--md5" in line and "--no-verify" in line


def test_wrong_md5_over_http(tmp_path: Path, cifar_archive: Path, http_server):
    shutil.copy(cifar_archive, http_server.root / "c.tar.gz")
    url = http_server.url("c.tar.gz")
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, source=url, md5="0" * 32))
    assert "checksum mismatch" in line and url in line


def _truncated(cifar_archive: Path, to: Path) -> Path:
    blob = cifar_archive.read_bytes()
    to.write_bytes(blob[: len(blob) // 2])
    return to


def _not_an_archive(cifar_archive: Path, to: Path) -> Path:
    to.write_text("<html>this is a login page, not an archive</html>\n")
    return to


@pytest.mark.parametrize("make", [_truncated, _not_an_archive], ids=["truncated", "not-archive"])
@pytest.mark.parametrize("via", ["file", "http"])
def test_bad_archive(tmp_path: Path, cifar_archive: Path, http_server, make, via: str):
    where = http_server.root if via == "http" else tmp_path_outside(tmp_path)
    bad = make(cifar_archive, where / "bad.tar.gz")
    source = http_server.url("bad.tar.gz") if via == "http" else str(bad)
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, source, verify=False))
    assert "archive" in line


def tmp_path_outside(tmp_path: Path) -> Path:
    # A folder beside the test's cwd, so that snapshots of the cwd do not include the source.
    folder = tmp_path.parent / f"{tmp_path.name}-src"
    folder.mkdir(exist_ok=True)
    return folder


def test_missing_url(tmp_path: Path, http_server):
    url = http_server.url("nothing-here.tar.gz")
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, source=url))
    assert "HTTP 404" in line and url in line


def test_unreachable_host(tmp_path: Path):
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-python.tar.gz"
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, source=url))
    assert line.startswith(f"error: could not download CIFAR-10 ({url}): ")
    assert "vqtool download --source FILE" in line


def test_missing_local_file(tmp_path: Path):
    line = expect_clean_failure(
        tmp_path, lambda d: download_cifar10(d, "nope.tar.gz", verify=False)
    )
    assert "nope.tar.gz" in line


def _link(kind: bytes, name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


@pytest.mark.parametrize(
    "extra",
    [
        file_member("../evil", b"x"),
        file_member("../../evil", b"x"),
        file_member(f"{BATCHES_DIR}/../../../evil", b"x"),
        file_member("/tmp/vqtool-test-evil-absolute", b"x"),
        _link(tarfile.SYMTYPE, f"{BATCHES_DIR}/evil", "../../evil"),
        _link(tarfile.SYMTYPE, "evil-link", "/etc"),
        _link(tarfile.LNKTYPE, f"{BATCHES_DIR}/hard", "/etc/passwd"),
        _device(f"{BATCHES_DIR}/null"),
    ],
    ids=[
        "dotdot",
        "dotdot2",
        "inner-dotdot",
        "absolute",
        "symlink",
        "dir-symlink",
        "hardlink",
        "device",
    ],
)
def test_unsafe_member_refused(tmp_path: Path, extra):
    archive = write_tar(tmp_path_outside(tmp_path) / "evil.tar.gz", [*cifar_members(4, 4), extra])
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, str(archive), verify=False))
    assert "refusing archive member" in line
    for p in (tmp_path / "evil", tmp_path.parent / "evil", Path("/tmp/vqtool-test-evil-absolute")):
        assert not p.exists()


def test_extra_safe_members_outside_batches_are_skipped(tmp_path: Path):
    archive = make_cifar_archive(
        tmp_path_outside(tmp_path) / "a.tar.gz", 4, 4, extra_members={"README": b"hello"}
    )
    download_cifar10(tmp_path / "data", str(archive), verify=False)
    assert os.listdir(tmp_path / "data") == [BATCHES_DIR]


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Open:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [_System, _Open], ids=["os.system", "builtins.open"])
def test_doctored_archive_refused(tmp_path: Path, payload):
    marker = tmp_path_outside(tmp_path) / "MARKER"
    members = cifar_members(4, 4)
    evil = {"data": payload(marker), "labels": [0]}
    members[0] = file_member(f"{BATCHES_DIR}/data_batch_1", pickle.dumps(evil, protocol=2))
    archive = write_tar(tmp_path_outside(tmp_path) / "doctored.tar.gz", members)
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, str(archive), verify=False))
    assert "refusing to unpickle" in line and "data_batch_1" in line
    assert not marker.exists()


def test_archive_missing_a_batch(tmp_path: Path):
    members = [m for m in cifar_members(4, 4) if not m[0].name.endswith("test_batch")]
    archive = write_tar(tmp_path_outside(tmp_path) / "short.tar.gz", members)
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, str(archive), verify=False))
    assert "test_batch" in line


def test_archive_without_batches_folder(tmp_path: Path):
    archive = write_tar(tmp_path_outside(tmp_path) / "x.tar.gz", [file_member("a.txt", b"a")])
    line = expect_clean_failure(tmp_path, lambda d: download_cifar10(d, str(archive), verify=False))
    assert BATCHES_DIR in line


def test_failure_keeps_an_existing_data_dir_as_it_was(tmp_path: Path, cifar_archive: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "mine.txt").write_text("keep me")
    with pytest.raises(WorkError):
        download_cifar10(data_dir, str(cifar_archive))  # wrong (official) md5
    assert os.listdir(data_dir) == ["mine.txt"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"md5": CIFAR10_MD5, "verify": False}, "--md5 and --no-verify"),
        ({"md5": "xyz"}, "32 hexadecimal digits"),
    ],
)
def test_usage_errors(tmp_path: Path, cifar_archive: Path, kwargs, message: str):
    line = expect_clean_failure(
        tmp_path, lambda d: download_cifar10(d, str(cifar_archive), **kwargs), UsageError
    )
    assert message in line


def test_invalid_existing_folder_reported_then_replaced_with_force(
    tmp_path: Path, cifar_archive: Path
):
    data_dir = make_cifar_folder(tmp_path / "data", 4, 4)
    (data_dir / BATCHES_DIR / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(WorkError) as info:
        download_cifar10(data_dir, str(cifar_archive), verify=False)
    assert "data_batch_3" in info.value.line() and "--force" in info.value.line()
    assert (data_dir / BATCHES_DIR / "data_batch_3").read_bytes() == b"garbage"

    result = download_cifar10(data_dir, str(cifar_archive), verify=False, force=True)
    assert not result.already_present
    validate_cifar10(result.folder)
    assert os.listdir(data_dir) == [BATCHES_DIR]
    assert load_cifar10(data_dir, "train").shape == (200, 3, 32, 32)


def test_force_failure_keeps_the_old_folder(data_dir: Path, tmp_path: Path):
    bad = _not_an_archive(Path(), tmp_path / "bad.tar.gz")
    with pytest.raises(WorkError):
        download_cifar10(data_dir, str(bad), verify=False, force=True)
    validate_cifar10(data_dir / BATCHES_DIR)
    assert os.listdir(data_dir) == [BATCHES_DIR]


def test_load_shapes_dtypes_and_values(data_dir: Path):
    train, test = load_cifar10(data_dir, "train"), load_cifar10(data_dir, "test")
    assert train.shape == (200, 3, 32, 32) and train.dtype == torch.uint8
    assert test.shape == (40, 3, 32, 32) and test.dtype == torch.uint8
    labels = load_cifar10_labels(data_dir, "train")
    assert labels.shape == (200,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) <= 9
    first = pickle.loads(cifar_batch_blobs()["data_batch_1"])["data"][0]
    assert np.array_equal(train[0].numpy().reshape(-1), first)  # channel-major rows


def test_load_errors(tmp_path: Path, data_dir: Path):
    with pytest.raises(WorkError, match="vqtool download"):
        load_cifar10(tmp_path / "empty", "train")
    with pytest.raises(UsageError):
        load_cifar10(data_dir, "validation")


@pytest.mark.parametrize("payload", [_System, _Open], ids=["os.system", "builtins.open"])
def test_doctored_batch_refused_on_load(data_dir: Path, tmp_path: Path, payload):
    marker = tmp_path / "MARKER"
    (data_dir / BATCHES_DIR / "test_batch").write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(WorkError, match="refusing to unpickle"):
        load_cifar10(data_dir, "test")
    with pytest.raises(WorkError, match="test_batch"):
        validate_cifar10(data_dir / BATCHES_DIR)
    assert not marker.exists()


def test_python2_bytes_keyed_batches_load(tmp_path: Path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "data" / BATCHES_DIR
    folder.mkdir(parents=True)
    expected = {}
    for k, name in enumerate((*TRAIN_FILES, "test_batch")):
        data = make_images(3, rng)
        expected[name] = data
        if k % 2:  # Python 3 pickle with bytes keys (bytes via _codecs.encode)
            blob = pickle.dumps({b"data": data, b"labels": [1, 2, 3]}, protocol=2)
        else:  # cPickle-style Python 2 str keys and raw bytes
            blob = py2_batch_pickle(data, [1, 2, 3])
        (folder / name).write_bytes(blob)
    validate_cifar10(folder)
    train = load_cifar10(tmp_path / "data", "train")
    assert train.shape == (15, 3, 32, 32)
    assert np.array_equal(train[:3].numpy().reshape(3, -1), expected["data_batch_1"])
    assert np.array_equal(
        load_cifar10(tmp_path / "data", "test")[2].numpy().reshape(-1), expected["test_batch"][2]
    )
    assert load_cifar10_labels(tmp_path / "data", "test").tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8"),
        ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "shape"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "labels"),
        ([1, 2, 3], "not a dict"),
    ],
)
def test_validate_rejects_malformed_batches(data_dir: Path, batch, message: str):
    (data_dir / BATCHES_DIR / "data_batch_5").write_bytes(pickle.dumps(batch))
    with pytest.raises(WorkError, match=message) as info:
        validate_cifar10(data_dir / BATCHES_DIR)
    assert "data_batch_5" in info.value.line()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("VQTOOL_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
