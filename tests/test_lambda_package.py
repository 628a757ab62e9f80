"""The Lambda stays deployable on its own: it imports only the standard library, boto3/botocore,
aws-lambda-powertools and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAMBDA = Path(__file__).resolve().parents[1] / "lambda"
ALLOWED = {"boto3", "botocore", "aws_lambda_powertools", "fruits_ingest"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_lambda_imports_nothing_from_outside_lambda() -> None:
    files = sorted((LAMBDA / "fruits_ingest").glob("*.py"))
    assert files
    for path in files:
        foreign = imported_roots(path) - ALLOWED - set(sys.stdlib_module_names)
        assert not foreign, f"{path.name} imports {foreign}: the Lambda package would not deploy alone"


def test_requirements_pin_powertools() -> None:
    assert (LAMBDA / "requirements.txt").read_text().split() == ["aws-lambda-powertools==3.37.0"]
