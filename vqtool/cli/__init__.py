"""The command line: the only package that prints. `app` holds the shared options and error
handling; vq, codes, prior, export and pretrained register their commands on it, in the order
`--help` lists them (so these imports keep their order)."""

# isort: skip_file
from vqtool.cli import vq  # noqa: F401  (registers the commands)
from vqtool.cli import codes  # noqa: F401
from vqtool.cli import prior  # noqa: F401
from vqtool.cli import export  # noqa: F401
from vqtool.cli import pretrained  # noqa: F401
from vqtool.cli.app import app, main

__all__ = ["app", "main"]
