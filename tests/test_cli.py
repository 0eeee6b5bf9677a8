"""The core commands through the CLI: help, success, and every error as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from helpers import REPO, closed_port, one_error_line, source_env
from typer.testing import CliRunner

from vqtool.cli import app

runner = CliRunner()

EVAL_KEYS = {
    "nmse",
    "mse",
    "psnr",
    "perplexity",
    "codebook_usage",
    "dead_codes",
    "bits_per_image",
    "entropy_bits_per_image",
    "images",
    "images_per_s",
    "checkpoint",
    "step",
}


@pytest.mark.parametrize(
    "command",
    [
        "download",
        "train",
        "evaluate",
        "profiles",
        "encode",
        "decode",
        "inspect",
        "roundtrip",
        "plot",
        "compare",
        "prior",
        "sample",
        "export",
    ],  # fmt: skip
)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"vqtool {command}" in result.output


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vqtool", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "train" in result.stdout


def test_the_command_keeps_its_output_and_exit_code_through_its_fast_exit() -> None:
    # main() ends with os._exit after flushing: nothing printed may be lost, codes stay.
    def vqtool(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "vqtool", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    shown = vqtool("profiles", "ema-kaiming")
    assert shown.returncode == 0 and shown.stdout.rstrip().endswith("collapse_guard = false")
    refused = vqtool("train", "--profile", "no-such-profile")
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "no-such-profile" in refused.stderr
    # A reader that stops early (| head -1): no traceback about the closed pipe.
    piped = subprocess.run(
        f"{sys.executable} -m vqtool profiles ema-kaiming | head -1",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0 and "Traceback" not in piped.stderr


def test_profiles_lists_and_resolves() -> None:
    result = runner.invoke(app, ["profiles"])
    assert result.exit_code == 0
    for name in ("original", "ema", "ema-kaiming", "smoke", "fast"):
        assert name in result.output
    result = runner.invoke(app, ["profiles", "ema"])
    assert result.exit_code == 0
    assert "decay = 0.99" in result.output and "kaiming_init = false" in result.output


def test_unknown_option_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["train", "--bogus"])
    assert result.exit_code == 2
    assert "--bogus" in one_error_line(result.output)


@pytest.mark.parametrize(
    ("args", "toml", "expected"),
    [
        (["--profile", "nope"], None, "unknown profile 'nope'"),
        (["--profile", "smoke", "--set", "train.lerning_rate=1"], None, "learning_rate"),
        (["--profile", "smoke", "--set", "train.steps=ten"], None, "train.steps"),
        (["--profile", "smoke", "--set", "train.learning_rate=-1"], None, "> 0"),
        (["--profile", "bad.toml"], "[train\nsteps = 3", "malformed TOML"),
        (["--profile", "bad.toml"], "[model]\nnum_hidens = 3\n", "num_hiddens"),
        (["--profile", "bad.toml"], "[train]\nsteps = 1.5\n", "train.steps"),
    ],
)
def test_bad_profiles_exit_2_naming_the_problem(
    args: list[str], toml: str | None, expected: str, data_dir: Path, tmp_path: Path
) -> None:
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
    result = runner.invoke(app, ["train", *args, "--data-dir", str(data_dir)])
    assert result.exit_code == 2
    assert expected in one_error_line(result.output)
    assert not Path("runs").exists()


def test_train_then_evaluate(tiny_profile: Path, data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_args = ["train", "--profile", str(tiny_profile), "--run-dir", str(run)]
    train_args += ["--data-dir", str(data_dir)]
    result = runner.invoke(app, train_args)
    assert result.exit_code == 0, result.output
    assert str(run) in result.stdout
    assert "training on cpu" in result.output and "img/s" in result.output
    for name in ("profile.toml", "metrics.jsonl", "checkpoint.pt"):
        assert (run / name).is_file()

    again = runner.invoke(app, train_args)
    assert again.exit_code == 2 and "--resume" in one_error_line(again.output)

    result = runner.invoke(app, ["evaluate", str(run), "--data-dir", str(data_dir), "--json", "-"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    written = json.loads((run / "eval-test.json").read_text())
    assert set(written) >= EVAL_KEYS
    assert printed == written
    assert written["images"] == 40 and written["step"] == 30
    assert 0 < written["codebook_usage"] <= 1 and written["dead_codes"] >= 0
    assert written["bits_per_image"] == 64 * 5  # 8x8 codes, log2(32) bits each


def test_evaluate_table_and_train_split(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(run / "checkpoint.pt"),
            "--split",
            "train",
            "--data-dir",
            str(trained_data_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "psnr" in result.stdout
    assert json.loads((run / "eval-train.json").read_text())["images"] == 200


def test_evaluate_without_data_says_download(trained_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", str(trained_run), "--data-dir", str(tmp_path / "none")]
    )
    assert result.exit_code == 1
    assert "vqtool download" in one_error_line(result.output)


def test_evaluate_bad_split(trained_run: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(trained_run), "--split", "valid"])
    assert result.exit_code == 2 and "split" in one_error_line(result.output)


def download(data_dir: str | Path, source: str | Path, *flags: str):  # type: ignore[no-untyped-def]
    """`vqtool download --data-dir D --source S FLAGS...` through the CliRunner."""
    return runner.invoke(
        app, ["download", "--data-dir", str(data_dir), "--source", str(source), *flags]
    )


def test_download_from_file_then_already_there(cifar_archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "d"
    result = download(target, cifar_archive, "--no-verify")
    assert result.exit_code == 0, result.output
    assert (target / "cifar-10-batches-py" / "test_batch").is_file()
    result = download(target, cifar_archive, "--no-verify")
    assert result.exit_code == 0 and "already" in result.output


def test_download_over_http_with_md5(cifar_archive: Path, http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import shutil

    shutil.copy(cifar_archive, http_server.root / "c.tar.gz")
    md5 = hashlib.md5(cifar_archive.read_bytes()).hexdigest()
    target = tmp_path / "d"
    result = download(target, http_server.url("c.tar.gz"), "--md5", md5)
    assert result.exit_code == 0, result.output
    bad = download(tmp_path / "e", http_server.url("c.tar.gz"), "--md5", "0" * 32)
    assert bad.exit_code == 1 and "checksum" in one_error_line(bad.output)
    assert not (tmp_path / "e").exists()


def test_download_md5_and_no_verify_together(cifar_archive: Path, tmp_path: Path) -> None:
    result = download(tmp_path / "d", cifar_archive, "--md5", "0" * 32, "--no-verify")
    assert result.exit_code == 2
    one_error_line(result.output)


def test_download_unreachable_host(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = download(tmp_path / "d", f"http://127.0.0.1:{port}/x.tar.gz", "--no-verify")
    assert result.exit_code == 1
    assert "vqtool download --source FILE" in one_error_line(result.output)
    assert not (tmp_path / "d").exists()


def test_train_offline_says_download_source(
    tiny_profile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vqtool.data.cifar10

    monkeypatch.setattr(
        vqtool.data.cifar10, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz"
    )
    result = runner.invoke(
        app,
        [
            "train",
            "--profile",
            str(tiny_profile),
            "--run-dir",
            str(tmp_path / "r"),
            "--data-dir",
            str(tmp_path / "d"),
        ],
    )
    assert result.exit_code == 1
    assert "vqtool download --source FILE" in one_error_line(result.output)


@pytest.mark.parametrize("ignored", [False, True])
def test_a_signal_during_the_torch_import_is_acted_on_after_it(ignored: bool) -> None:
    # A KeyboardInterrupt raised inside torch's extension loading is lost there: the command
    # would then run to its end. import_torch holds Ctrl-C until the import is done; a Ctrl-C
    # the process ignores (a background job of a script) stays ignored.
    script = (
        "import os, signal, sys, threading, time\n"
        f"{'signal.signal(signal.SIGINT, signal.SIG_IGN)' if ignored else ''}\n"
        "from vqtool.process import import_torch\n"
        "def interrupt():\n"
        "    while 'torch' not in sys.modules:\n"
        "        time.sleep(0.0005)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "threading.Thread(target=interrupt).start()\n"
        "try:\n"
        "    import_torch()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after the import', 'torch.nn' in sys.modules)\n"
        "else:\n"
        "    print('not interrupted', 'torch.nn' in sys.modules)\n"
        "time.sleep(0.5)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env=source_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = "not interrupted" if ignored else "interrupted after the import"
    assert result.stdout.strip() == f"{expected} True"


def test_evaluate_of_a_run_it_cannot_write_still_gives_the_metrics(
    trained_run: Path, trained_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vqtool.vq.evaluate

    def read_only(path: Path, metrics: dict[str, object]) -> Path:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(vqtool.vq.evaluate, "write_eval", read_only)
    result = runner.invoke(
        app, ["evaluate", str(trained_run), "--json", "-", "--data-dir", str(trained_data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] > 0
    assert "could not save eval-test.json" in result.stderr and "Read-only" in result.stderr


def test_no_arguments_shows_the_help_without_an_empty_error() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "Usage" in result.output and "error:" not in result.output


def test_unknown_device_is_a_usage_error(trained_run: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(trained_run), "--device", "gpu"])
    assert result.exit_code == 2 and "unknown device 'gpu'" in one_error_line(result.output)


def test_errors_keep_colons_as_typed(trained_run: Path) -> None:
    # rich would render ":train:" as an emoji.
    result = runner.invoke(
        app, ["encode", str(trained_run), "cifar10:train:5:smile:", "-o", "x.vqc"]
    )
    assert result.exit_code == 2
    assert "cifar10:train:5:smile:" in one_error_line(result.output)


def test_evaluate_keeps_its_file_when_the_reader_stops_early(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "eval-test.json").unlink(missing_ok=True)
    command = f"{sys.executable} -m vqtool evaluate {run} --data-dir {trained_data_dir} | head -c 0"
    subprocess.run(command, shell=True, env=source_env(), timeout=120, capture_output=True)
    assert json.loads((run / "eval-test.json").read_text())["split"] == "test"


@pytest.mark.parametrize("chosen_by", ["default", "VQTOOL_DATA_DIR", "--data-dir"])
def test_a_train_without_data_names_the_folder_and_leaves_nothing(
    chosen_by: str, tiny_profile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 11, item 4: no data and no network used to fail with the network error alone and
    # leave runs/<profile>-<timestamp>/.lock behind each time.
    monkeypatch.setattr(
        "vqtool.data.cifar10.CIFAR10_URL", f"http://127.0.0.1:{closed_port()}/c.tar.gz"
    )
    args = ["train", "--profile", str(tiny_profile)]
    folder = "data"
    if chosen_by == "VQTOOL_DATA_DIR":
        folder = "from-env"
        monkeypatch.setenv("VQTOOL_DATA_DIR", folder)
    elif chosen_by == "--data-dir":
        folder = "given"
        args += ["--data-dir", folder]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    line = one_error_line(result.output)
    assert f"no CIFAR-10 in {folder} " in line and chosen_by in line, line
    assert "vqtool download --source FILE" in line
    assert (f"--data-dir {folder}" in line) is (chosen_by == "--data-dir")
    assert list(tmp_path.iterdir()) == []  # no runs/, no .lock, no data folder


def test_a_train_that_cannot_start_makes_no_run_folder(
    tiny_profile: Path, data_dir: Path, tmp_path: Path
) -> None:
    # Issue 11, item 4: everything that can refuse the request comes before the run folder.
    args = ["train", "--profile", str(tiny_profile), "--data-dir", str(data_dir)]
    result = runner.invoke(app, [*args, "--set", "data.batch_size=1000"])
    assert result.exit_code == 2 and "batch_size" in one_error_line(result.output)
    result = runner.invoke(app, [*args, "--run-dir", "runs/x", "--set", "data.batch_size=1000"])
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_log_lines_stay_whole_when_stderr_is_not_a_terminal(
    tiny_profile: Path, data_dir: Path, tmp_path: Path
) -> None:
    # Issue 11, item 5: lines were wrapped at 80 columns in logs, which broke grep.
    run = tmp_path / ("a-run-folder-with-a-long-name-" * 3)
    env = {k: v for k, v in source_env().items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [sys.executable, "-m", "vqtool", "train", "--profile", str(tiny_profile),
         "--data-dir", str(data_dir), "--run-dir", str(run)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    start = [line for line in lines if line.startswith("training on ")]
    assert len(start) == 1 and start[0].endswith(f"-> {run}") and len(start[0]) > 100
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 3 and all(line.endswith("img/s") for line in steps)
    end = [line for line in lines if line.startswith("done: ")]
    assert len(end) == 1 and end[0].endswith("s of training") and len(end[0]) > 80
    assert len(lines) == 5, lines


COMMANDS = [
    "download", "train", "evaluate", "profiles", "plot", "compare", "encode", "decode", "inspect",
    "roundtrip", "prior", "sample", "export", "pretrained",
]  # fmt: skip


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_placeholders_not_python_types(command: str | None) -> None:
    # Issue 11, item 6: `--resume <bool>`, `--set <list[str]>`, `<path>`, `<str>`.
    result = runner.invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    for python_type in ("<bool>", "<str>", "<path>", "<int", "list[", "{run}"):
        assert python_type not in result.output, (python_type, result.output)
    if command == "train":
        assert "KEY=VALUE" in result.output and "--resume " in result.output


def test_the_command_list_gives_each_command_one_line() -> None:
    # Issue 11, item 6: descriptions in `vqtool --help` broke mid-sentence.
    output = runner.invoke(app, ["--help"]).output
    after = output[output.index("Commands") :].splitlines()[1:]
    panel = after[: next(i for i, line in enumerate(after) if not line.startswith("│"))]
    assert [line.split()[1] for line in panel] == COMMANDS, output
    assert all(line.rstrip(" │").endswith(".") for line in panel), output


def test_version() -> None:
    import vqtool

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"vqtool {vqtool.__version__}\n"


def test_resume_says_where_it_resumes_and_a_finished_run_only_that_it_is(
    trained_run: Path, trained_data_dir: Path, tmp_path: Path
) -> None:
    # Issue 11, item 7: a resumed run did not say its step; a finished one printed
    # "training on cpu..." after "nothing to train".
    import shutil

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    args = ["train", "--resume", "--run-dir", str(run), "--data-dir", str(trained_data_dir)]
    finished = runner.invoke(app, args)
    assert finished.exit_code == 0, finished.output
    assert "nothing to train" in finished.stderr
    assert "training on" not in finished.stderr and "done:" not in finished.stderr
    resumed = runner.invoke(app, [*args, "--set", "train.steps=40"])
    assert resumed.exit_code == 0, resumed.output
    lines = resumed.stderr.splitlines()
    assert lines[0] == "resuming from step 30 of 40" and lines[1].startswith("training on cpu")


def test_the_readme_says_what_its_first_training_costs() -> None:
    # Issue 11, item 9: the README's first command trains for 25,000 steps without saying so.
    from vqtool.profiles import load_profile

    # The front page's first training is the smoke profile; the text beside it says what the
    # full-length ema profile costs.
    readme = (REPO / "README.md").read_text()
    first = readme.index("vqtool train --profile")
    beside = readme[first : first + 600]
    steps = load_profile("ema").train.steps
    assert f"{steps:,} steps" in beside and "minutes on a 2-core CPU" in beside
    assert "--profile smoke" in beside and "ema" in beside


def test_help_paragraphs_flow_at_any_width() -> None:
    # typer keeps a docstring's line breaks after its first paragraph: "(--stages N: one," then
    # "written to ..." on a line of its own in an 80-column terminal.
    result = runner.invoke(app, ["evaluate", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "(--stages N: one, written to eval-<split>-stages<N>.json)." in result.output
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert len(commands) >= 12
    for name, command in commands.items():
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph, (name, paragraph)
