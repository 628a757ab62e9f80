"""The Lambda stays deployable on its own: it imports only the standard library, boto3/botocore,
aws-lambda-powertools, delta-rs (deltalake, with arro3-core instead of pyarrow) and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAMBDA = Path(__file__).resolve().parents[1] / "lambda"
ALLOWED = {"boto3", "botocore", "aws_lambda_powertools", "deltalake", "arro3", "fruits_ingest"}


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


def test_requirements_pin_the_lambdas_dependencies_as_the_project_does() -> None:
    """The same versions as the jobs' (pyproject.toml), and no pyarrow: with it, the package would
    pass Lambda's 250 MB limit (deltalake needs only arro3-core)."""
    import tomllib

    pinned = (LAMBDA / "requirements.txt").read_text().split()
    assert pinned == ["aws-lambda-powertools==3.37.0", "deltalake==1.6.6", "arro3-core==0.9.1"]
    project = tomllib.loads((LAMBDA.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {"deltalake==1.6.6"} <= set(project) and not any(p.startswith("pyarrow") for p in pinned)
