"""The ``fruits`` command's reference, generated from its parser and settings: every command, flag,
exit code and ``FRUITS_*`` variable, as ``docs/cli.md`` holds it.

Example::

    python -m fruits.cli_reference > docs/cli.md       # make cli-reference

``tests/test_cli.py`` fails when ``docs/cli.md`` is not what this writes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import cli, config

ROOT = Path(__file__).resolve().parents[2]  # defaults under the project are shown relative to it
HEADER = """# `fruits` command reference

Generated from the code (`fruits.cli`, `fruits.config`) by `make cli-reference`; `tests/test_cli.py`
fails when this file is stale. Every command also takes `-h`.
"""


def _commands(
    parser: argparse.ArgumentParser, prefix: str = "fruits"
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of every runnable command, depth first, in the parser's order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix} {name}")
                found += nested or [(f"{prefix} {name}", helps.get(name, ""), sub)]
    return found


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """A table row per argument of ``parser`` (not -h)."""
    rows = ["| argument | what | default |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
        takes_value = action.nargs != 0 and not isinstance(action, argparse._VersionAction)
        if action.option_strings and takes_value:
            names += f" {action.metavar or action.dest.upper()}"
        default = action.default
        shown = (
            ""
            if default in (None, False, argparse.SUPPRESS) or action.nargs == 0
            else f"`{str(default).replace(f'{ROOT}/', '')}`"
        )
        rows.append(f"| {names} | {(action.help or '').replace('|', '/')} | {shown} |")
    return rows


def render() -> str:
    """The reference, as Markdown."""
    parser = cli.build_parser()
    commands = _commands(parser)
    exit_codes = re.sub(r"\s+", " ", (cli.__doc__ or "").split("Exit codes:", 1)[1]).strip()
    lines = [
        HEADER,
        "## Exit codes",
        "",
        exit_codes,
        "",
        "## Options of every command",
        "",
        *_flags(parser),
        "",
        "## Commands",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text, _ in commands]
    for name, text, sub in commands:
        lines += ["", f"### `{name}`", "", text, "", *_flags(sub)]
    settings = [line.strip() for line in (config.__doc__ or "").splitlines() if line.strip().startswith("|")]
    lines += [
        "",
        "## Settings",
        "",
        "Every command reads these `FRUITS_*` variables (`fruits.config.Settings`); a flag "
        "of the same name wins. A bad value stops the command with one line naming the variable (exit 2).",
        "",
        *settings,
    ]
    return "\n".join(lines).replace("``", "`") + "\n"


if __name__ == "__main__":
    print(render(), end="")
