"""docs/formats.md against real files: the members and header keys of every code file version
and coding, evaluate's JSON and inspect's JSON, read from the page's tables and compared with
what the current code writes (and, for the coding it only reads, with what its reader asks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import MIXED_SIZES, REPO, KindRuns, code_arrays, make_sized_folder
from typer.testing import CliRunner

from vqtool.cli import app
from vqtool.codes import vqc

PAGE = REPO / "docs" / "formats.md"
ALL_CODINGS = ("raw", *vqc.CODINGS)
runner = CliRunner()


def table(heading: str) -> list[dict[str, str]]:
    """The rows of the first table under the page's heading `heading`, by column name, with
    the backticks around a cell's name removed."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    columns, body = rows[0], rows[2:]  # rows[1] is the |---| line
    named = []
    for row in body:
        cells = dict(zip(columns, row, strict=True))
        cells[columns[0]] = cells[columns[0]].strip("`")
        named.append(cells)
    return named


def numbers(cell: str) -> set[int]:
    return {int(v) for v in cell.split(",")}


def codings(cell: str) -> set[str]:
    return set(ALL_CODINGS) if cell == "all" else {v.strip() for v in cell.split(",")}


def documented(heading: str, name: str, version: int, coding: str) -> set[str]:
    """The names the table under `heading` gives a file of this version and coding."""
    return {
        row[name]
        for row in table(heading)
        if version in numbers(row["versions"]) and coding in codings(row["codings"])
    }


def invoke(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def code_files(kind_runs: KindRuns, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A file of every version and coding vqtool writes: 'v1 raw', 'v2 unigram', ...; of
    versions 5 and 6 one of each kind ('v5 raw ema', 'v5 raw rvq', ...)."""
    folder = tmp_path_factory.mktemp("formats")
    files = {}
    for kind, (raw, compressed) in {"ema": (1, 2), "rvq": (3, 4)}.items():
        run = kind_runs[kind]
        for version, coding, args in [
            (raw, "raw", []),
            (compressed, "unigram", ["--compress"]),
            (compressed, "exact", ["--prior", str(run / "prior")]),
        ]:
            path = folder / f"v{version}-{coding}.vqc"
            invoke("encode", run, "cifar10:test:5", "-o", path, "--data-dir", kind_runs.data, *args)
            files[f"v{version} {coding}"] = path
    photos = make_sized_folder(folder / "photos", MIXED_SIZES)
    for kind in ("ema", "rvq"):
        run = kind_runs[kind]
        for version, coding, args in [
            (5, "raw", []),
            (6, "unigram", ["--compress"]),
            (6, "exact", ["--prior", str(run / "prior")]),
        ]:
            path = folder / f"v{version}-{coding}-{kind}.vqc"
            invoke("encode", run, photos, "-o", path, *args)
            files[f"v{version} {coding} {kind}"] = path
    return files


def header_and_members(path: Path) -> tuple[dict[str, Any], set[str]]:
    arrays = code_arrays(path)
    members, raw = set(arrays), arrays["header"]
    text = raw.tobytes().decode() if raw.dtype == np.uint8 else str(raw[()])
    return json.loads(text), members


def test_the_page_names_every_version_and_coding_the_reader_takes() -> None:
    versions = {int(row["version"]) for row in table("### Versions")}
    assert versions == {*vqc.RAW_VERSIONS, *vqc.COMPRESSED_VERSIONS} == {1, 2, 3, 4, 5, 6}
    named = set().union(*(codings(row["codings"]) for row in table("### Header keys")))
    assert named == set(ALL_CODINGS)


def test_header_keys_and_members_of_every_written_file_are_the_documented_ones(
    code_files: dict[str, Path],
) -> None:
    assert len(code_files) == 12
    for label, path in code_files.items():
        version, coding = int(label.split()[0][1:]), label.split()[1]
        header, members = header_and_members(path)
        assert (header["version"], header.get("coding", "raw")) == (version, coding)
        optional = set(vqc.OPTIONAL_KEYS)  # named by the page, written where they apply
        written = documented("### Header keys", "key", version, coding)
        assert set(header) - optional == written - optional, label
        assert members == documented("### Members", "member", version, coding), label


@pytest.mark.parametrize("version", [vqc.COMPRESSED_VERSION, vqc.STAGED_COMPRESSED_VERSION])
def test_the_float_prior_coding_vqtool_only_reads_is_documented_as_its_reader_reads_it(
    version: int,
) -> None:
    keys = set(vqc.header_keys(version, "prior"))
    staged = version == vqc.STAGED_COMPRESSED_VERSION
    assert keys == set(vqc.COMPRESSED_KEYS) | ({"stages"} if staged else set())
    assert documented("### Header keys", "key", version, "prior") == keys
    members = documented("### Members", "member", version, "prior")
    assert members == {*vqc.COMPRESSED_MEMBERS, "chunks"}


def test_the_documented_header_keys_are_what_the_reader_asks_of_every_version() -> None:
    for version in (*vqc.RAW_VERSIONS, *vqc.COMPRESSED_VERSIONS):
        for coding in ["raw"] if version in vqc.RAW_VERSIONS else ["unigram", "exact"]:
            keys = set(vqc.header_keys(version, coding))
            if coding == "exact":
                keys |= set(vqc.OPTIONAL_KEYS)
            assert documented("### Header keys", "key", version, coding) == keys, version


def test_evaluates_json_has_the_documented_keys(kind_runs: KindRuns) -> None:
    from vqtool.vq.evaluate import evaluate_checkpoint

    rows = {row["key"]: row["written in"] for row in table("### A VQ run's eval-<split>.json")}
    assert set(rows.values()) == {
        "every file", "runs of stages", "runs of stages, every-count file only"
    }  # fmt: skip
    every = {key for key, where in rows.items() if where == "every file"}
    staged = {key for key, where in rows.items() if where == "runs of stages"}
    one_stage = json.loads((kind_runs["ema"] / "eval-test.json").read_text())
    assert set(one_stage) == every
    stages = json.loads((kind_runs["rvq"] / "eval-test.json").read_text())
    assert set(stages) == set(rows)
    assert isinstance(stages["stages"], int) and isinstance(stages["by_stages"], list)
    by_stages = {row["key"] for row in table("### by_stages rows")}
    assert all(set(row) == by_stages for row in stages["by_stages"])
    two = evaluate_checkpoint(kind_runs["rvq"], "test", kind_runs.data, stages=2)
    assert set(two) == every | staged and two["stages"] == 2
    prior = json.loads((kind_runs["rvq/prior"] / "eval-test.json").read_text())
    assert set(prior) == {row["key"] for row in table("### A prior run's eval-test.json")}


def test_inspects_json_has_the_documented_keys(code_files: dict[str, Path]) -> None:
    keys = {row["key"] for row in table("## inspect's JSON")}
    for path in code_files.values():
        assert set(json.loads(invoke("inspect", path, "--json", "-").stdout)) == keys


def test_the_tokens_example_is_what_codes_to_tokens_gives() -> None:
    from vqtool import codes_to_tokens

    codes = np.array([[[[3, 7], [0, 511]], [[5, 5], [2, 9]]]], np.uint16)  # (1, 2, 2, 2)
    tokens = codes_to_tokens(codes, 512)
    assert tokens.tolist() == [[[3, 7], [0, 511], [517, 517], [514, 521]]]
    page = " ".join(PAGE.read_text(encoding="utf-8").split())
    assert "`[[3, 7], [0, 511], [517, 517], [514, 521]]`" in page
    assert "3, 7, 0, 511, 517, 517, 514, 521" in page


def test_export_model_json_has_the_documented_keys(kind_runs: KindRuns) -> None:
    from vqtool.vq.export import graph_facts
    from vqtool.vq.load import load_model

    rows = {row["key"]: row["value"] for row in table("### model.json")}
    for kind, stages in [("fsq", 1), ("rvq", 2)]:
        facts = graph_facts(load_model(kind_runs[kind]), stages)
        assert set(facts) == set(rows)
        assert all(f"`{key}`" in rows["pixels"] for key in facts["pixels"])
        assert set(facts["encoder"]["output"]) == {"name", "type", "shape", "values"}
