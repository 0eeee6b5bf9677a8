"""The pretrained command: the ready-trained runs shipped inside the package."""

from __future__ import annotations

from typing import Annotated

import typer

from vqtool.cli import progress
from vqtool.cli.app import Command, JsonOut, app, reports_errors


@app.command(cls=Command, short_help="List the ready-trained runs: pretrained:NAME as RUN.")
@reports_errors
def pretrained(
    name: Annotated[
        str | None,
        typer.Argument(help="One run to describe (default: list them all).", metavar="NAME"),
    ] = None,
    path: Annotated[
        bool, typer.Option("--path", help="Print only the run's folder (to copy it).")
    ] = False,
    json_out: JsonOut = None,
) -> None:
    """The ready-trained runs inside vqtool, trained on CIFAR-10: give pretrained:NAME
    wherever a command takes a run folder (pretrained:NAME/prior for its prior), with no
    training and no network. They are read-only: evaluate, plot and prior write elsewhere.

    Example: [bold]vqtool roundtrip pretrained:cifar10-rvq my-photos -o r.png[/bold]

    A run folder of your own to write into (its checkpoint holds the weights alone: it is
    not resumed): [bold]cp -r "$(vqtool pretrained cifar10-ema --path)" my-run[/bold]
    """
    from vqtool.errors import UsageError
    from vqtool.pretrained import PREFIX, names, resolve
    from vqtool.reports.summary import pretrained_summary

    if name is not None:
        name = name.removeprefix(PREFIX)
        resolve(PREFIX + name)  # an unknown name: one line that lists the known ones
    if path:
        if name is None:
            raise UsageError(
                "--path needs a NAME", "--path", "e.g. vqtool pretrained cifar10-ema --path"
            )
        progress.out.print(str(resolve(PREFIX + name)), markup=False)
        return
    summaries = [pretrained_summary(n) for n in ([name] if name else names())]
    if json_out is not None:
        progress.emit_json(summaries if name is None else summaries[0], json_out)
        if json_out == "-":
            return
    if name is None:
        rows = [
            (s["name"], s["description"], f"{s['steps']:,}", _per_stage(s["psnr"], ".2f"),
             _per_stage(s["bits_per_image"], ",.0f"), s["prior"] or "")
            for s in summaries
        ]  # fmt: skip
        columns = ("RUN", "what", "steps", "test PSNR (dB)", "bits/image", "prior")
        table = progress.rows_table("ready-trained runs", columns, rows)
        # One line a run: the description cut short; `vqtool pretrained NAME` gives it whole.
        what = table.columns[1]
        what.no_wrap, what.overflow, what.max_width = True, "ellipsis", 40
        for index in (0, 5):  # names to copy: never cut
            table.columns[index].min_width = max(len(str(row[index])) for row in rows)
        table.caption = "vqtool pretrained NAME: the whole description and how it was trained"
        progress.print_result(table)
        return
    summary = summaries[0]
    facts = {
        "description": summary["description"],
        "trained": summary["trained"],
        "steps": summary["steps"],
        "test PSNR (dB), by stages": _per_stage(summary["psnr"], ".2f"),
        "bits per image, by stages": _per_stage(summary["bits_per_image"], ",.0f"),
        "prior": summary["prior"] or "none",
        "folder": summary["path"],
    }
    progress.print_result(progress.rows_table(summary["name"], ("", ""), facts.items()))


def _per_stage(values: list[float | None], spec: str) -> str:
    return " / ".join("?" if v is None else format(v, spec) for v in values)
