"""Developer sessions. They run in the current environment (no per-session venvs: torch is
several GB), so start them from the project's virtual environment: `.venv/bin/nox -s lint`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run (no slow, gpu or bench tests); extra args go to pytest."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """The slow tests too (longer training runs)."""
    session.run("python", "-m", "pytest", "-m", "not gpu and not bench", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "vqtool", "tests", "benchmarks", "scripts", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "vqtool", "tests", "benchmarks", "scripts", "noxfile.py"
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run("mypy", "vqtool")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures; pass --data-dir or set VQTOOL_BENCH_DATA to the real data."""
    session.run("python", "benchmarks/run.py", *session.posargs)
