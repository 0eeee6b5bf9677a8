"""Fixtures shared by the whole test suite.

- `_isolate` (autouse): every test runs in its own temporary folder, without VQTOOL_DATA_DIR
  or VQTOOL_DEBUG from the caller's environment.
- `cifar_archive` (session): a small .tar.gz in the official CIFAR-10 python layout
  (5 x 40 training images, 40 test images).
- `data_dir`: a fresh folder holding that dataset already extracted
  (`data_dir / "cifar-10-batches-py"`); pass it as `--data-dir`.
- `tiny_profile`: path of a TOML profile for a very small, quick model (extends smoke).
- `trained_run` (session): a run folder trained with the tiny profile on the tiny data
  (do not modify it; copy it first).
- `kind_runs` (session): a tiny run of every kind (ema, fsq, rvq; helpers.VQ_KINDS), each with
  a tiny prior inside, all evaluated (do not modify them; copy them first).
- `http_server`: a local HTTP server; put files in `.root`, fetch them from `.url(name)`.

Building archives by hand:
`from helpers import make_cifar_archive, make_cifar_folder, write_tiny_profile`.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    KindRuns,
    make_cifar_archive,
    make_cifar_folder,
    make_kind_runs,
    write_tiny_profile,
)


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VQTOOL_DATA_DIR", raising=False)
    monkeypatch.delenv("VQTOOL_DEBUG", raising=False)


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CIFAR-10 archive (official layout, not the official md5)."""
    return make_cifar_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh data folder holding the tiny dataset, extracted."""
    return make_cifar_folder(tmp_path_factory.mktemp("data"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class LocalServer:
    """A folder served over HTTP on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        """The URL of `root / name`."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """Serve a fresh folder (`.root`) on a free port; `.url(name)` gives a file's URL."""
    server = LocalServer(tmp_path_factory.mktemp("www"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tiny_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TOML profile for a very small model (see helpers.TINY_PROFILE)."""
    return write_tiny_profile(tmp_path_factory.mktemp("profile") / "tiny.toml")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained for 30 steps with the tiny profile on the tiny dataset."""
    from vqtool.profiles import load_profile
    from vqtool.vq.train import run_training

    root = tmp_path_factory.mktemp("trained")
    data = make_cifar_folder(root / "data")
    profile = load_profile(write_tiny_profile(root / "tiny.toml"))
    run_training(profile, root / "run", data)
    return root / "run"


@pytest.fixture(scope="session")
def trained_data_dir(trained_run: Path) -> Path:
    """The data folder that `trained_run` was trained on."""
    return trained_run.parent / "data"


@pytest.fixture(scope="session")
def kind_runs(tmp_path_factory: pytest.TempPathFactory) -> KindRuns:
    """Every kind of VQ run (helpers.VQ_KINDS), trained and evaluated, a prior inside each."""
    return make_kind_runs(tmp_path_factory.mktemp("kinds"))
