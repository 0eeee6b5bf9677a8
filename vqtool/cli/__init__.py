"""The command line: the only package that prints. `app` holds the commands; `main` runs them."""

from vqtool.cli.app import app, main

__all__ = ["app", "main"]
