"""What a query returns, how the CLI prints it, and the errors a query raises: no Spark, no
DuckDB, no delta-rs.

Example::

    result = QueryResult(columns=["label", "n"], rows=[("Banana", 12)], versions={"features": 3})
    print(format_table(result))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


class QueryError(ValueError):
    """A SQL statement was refused or stopped; the message says why and what to do."""


class ReadOnlyError(QueryError):
    """The statement is not a read of the pipeline's tables; nothing was run."""


class QueryLimitError(QueryError):
    """The statement ran past its time or memory bound (``FRUITS_QUERY_TIMEOUT_SECONDS``,
    ``FRUITS_QUERY_MEMORY_LIMIT``) and was stopped."""


class ModelMismatchError(ValueError):
    """A photo cannot be compared with the table: ``FRUITS_WEIGHTS`` are not the weights the table
    (and its classifier) was featurized with."""


class NoDirectionError(ValueError):
    """The target's PCA vector is all zeros: nothing is nearer or farther than anything else."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    versions: dict[str, int]  # Delta version read, per table


def format_table(result: QueryResult, max_width: int = 60) -> str:
    """A plain-text table, with long values (feature vectors) shortened."""

    def cell(value: Any) -> str:
        if isinstance(value, list):
            head = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value[:3])
            text = f"[{head}{', ...' if len(value) > 3 else ''}] ({len(value)})"
        else:
            text = "NULL" if value is None else str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    out = [line(result.columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    read = "; " + ", ".join(f"{k} v{v}" for k, v in result.versions.items()) if result.versions else ""
    out.append(f"({len(result.rows)} rows{read})")
    return "\n".join(out)


def to_json(value: Any) -> str:
    """JSON for the API's results (a dataclass or a list of them; numpy scalars and timestamps as text)."""
    return json.dumps(
        asdict(value) if hasattr(value, "__dataclass_fields__") else [asdict(v) for v in value], default=str
    )
