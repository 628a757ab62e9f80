"""The `fruits` command's contract with its user: flags checked before anything starts, one line per
mistake with a documented exit code (the traceback only with -v), reads that create nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruits.cli import main


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fruits", *argv], capture_output=True, text=True, timeout=120, env=env)


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("fruits 0."), done


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["similar", "uploads/a/b.jpg", "-k", "-3"], "argument -k: expected a whole number from 1 to 100, not '-3'"),
        (["pca", "refit", "--threshold", "95"], "expected a share above 0 and at most 1 (0.95 for 95 %), not '95'"),
        (["serve", "--port", "70000"], "expected a whole number from 0 to 65535"),
        (["health", "--stale-after", "soon"], "expected a number of 0 or more, not 'soon'"),
        (["upload", "data", "--per-class", "0"], "expected a whole number of at least 1"),
        (["maintain", "--retain-hours", "24"], "expected at least 168 hours (Delta's safety check"),
    ],
)
def test_a_flag_out_of_range_is_refused_before_anything_runs(argv: list[str], says: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and says in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_its_traceback_is_behind_v() -> None:
    # Nothing listens on port 9: the AWS SDK's own error.
    argv = ["replay-dlq", "--dry-run", "--endpoint-url", "http://127.0.0.1:9"]
    quiet = run(*argv)
    assert quiet.returncode == 1 and quiet.stdout == "", quiet
    assert quiet.stderr.strip().splitlines() == [
        'fruits: EndpointConnectionError: Could not connect to the endpoint URL: "http://127.0.0.1:9/"; is the '
        "emulator running (fruits emulator), and FRUITS_ENDPOINT_URL (--endpoint-url) its address? "
        "(-v shows the traceback)"
    ], quiet.stderr
    loud = run(*argv, "-v")  # after the subcommand, as before it
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr


# Without credentials: no variables, no files, no instance metadata to ask.
NO_AWS = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "FRUITS_"))} | {
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["upload", "/no/such/folder"], 1, "fruits: image folder /no/such/folder does not exist"),
        (
            ["model", "compile", "--weights", "/no/such.weights.h5", "--out", "/tmp/x.tflite"],
            1,
            "fruits: weights file /no/such.weights.h5 not found; set FRUITS_WEIGHTS to 'imagenet' or a file path",
        ),
        (
            ["query", "--engine", "duckdb", "DELETE FROM features"],
            2,
            "fruits: fruits query runs one read (SELECT, WITH ... SELECT, FROM ...) at a time, not DELETE",
        ),
        (
            ["query", "--engine", "duckdb", "SELEC 1"],
            2,
            'fruits: DuckDB: Parser Error: syntax error at or near "SELEC"',
        ),
        (
            ["query", "--engine", "duckdb", "SELECT count(*) FROM features"],
            1,
            "fruits: NoCredentialsError: Unable to locate credentials; set AWS_PROFILE",
        ),  # the tables on S3 by default
        (
            ["replay-dlq", "--dry-run"],
            1,
            "fruits: NoCredentialsError: Unable to locate credentials; set AWS_PROFILE "
            "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) for AWS, or FRUITS_ENDPOINT_URL",
        ),
    ],
)
def test_a_users_mistake_is_one_line_that_says_what_to_do(argv: list[str], code: int, says: str) -> None:
    done = run(*argv, env=NO_AWS)
    assert done.returncode == code and done.stdout == "", done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), done.stderr


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_a_query_over_a_mistyped_table_root_says_so_and_creates_nothing(
    spark, engine: str, tmp_path: Path, capsys
) -> None:
    typo = tmp_path / "tabels"
    with pytest.raises(SystemExit) as done:
        main(["query", "--engine", engine, "--table-root", str(typo), "SELECT count(*) FROM features"])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"fruits: no Delta table at {typo}/features: run the stream first (or check --table-root)"
    )
    assert not typo.exists()


@pytest.mark.spark
def test_a_key_never_seen_exits_3_as_text_and_as_json(spark, tmp_path: Path, capsys) -> None:
    from fruits.config import Settings
    from fruits.spark import tables

    root = tmp_path / "tables"
    tables.ensure_tables(spark, Settings(table_root=str(root)))
    for extra in ([], ["--json"]):
        with pytest.raises(SystemExit) as done:
            main(["status", "uploads/Kiwi/never.jpg", "--table-root", str(root), *extra])
        assert done.value.code == 3, extra
        assert "unknown" in capsys.readouterr().out


def test_the_cli_reference_is_current() -> None:
    from fruits.cli_reference import render

    committed = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert committed.read_text() == render(), "docs/cli.md is stale: run `make cli-reference` and commit it"
    assert "### `fruits health`" in committed.read_text() and "`FRUITS_REFRESH_SECONDS`" in committed.read_text()
