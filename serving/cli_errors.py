"""How the `nba` command line fails: a user's error is one line and exit code 2, a bug a traceback.

A user error is what the user fixes: bad data or configuration, a missing input file, commands
run in the wrong order (`features.errors.UserError` and FileNotFoundError; a path that is a
folder or cannot be written: IsADirectoryError, NotADirectoryError, PermissionError), and the
command line's own usage errors (a missing option, a directory that does not exist). Each prints
`nba <command>: <message>` on standard error, on one line, and exits with code 2. `nba --debug`
(or NBA_DEBUG=1) re-raises it with its traceback instead, and lets MLflow log as it likes;
without it MLflow's own INFO and WARNING lines are silenced (MLFLOW_LOGGING_LEVEL set by the
user wins).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import typer
from typer.core import TyperGroup

from features.errors import UserError, one_line

USER_ERROR_EXIT = 2
DEBUG_FLAG = "--debug"
# loggers of libraries that talk at INFO or WARNING during a normal run
NOISY_LOGGERS = ("mlflow", "alembic", "alembic.runtime.migration", "urllib3", "git")


def quiet_libraries() -> None:
    """MLflow (and the alembic migrations of its SQLite store) log errors only, unless the
    user set MLFLOW_LOGGING_LEVEL; MLflow's Python warnings are not shown."""
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level.upper() if name.startswith("mlflow") else "ERROR")
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", message=r".*mlflow.*", category=FutureWarning)


def _message(exc: Exception) -> str | None:
    """The one-line message of a user error, None for anything else (a bug)."""
    from typer._click.exceptions import ClickException, UsageError

    if isinstance(exc, UsageError):
        command = exc.ctx.command_path if exc.ctx is not None else "nba"
        return f"{exc.format_message()} (see `{command} --help`)"
    if isinstance(exc, ClickException):
        return exc.format_message()
    if isinstance(exc, UserError | FileNotFoundError):
        return str(exc)
    if isinstance(exc, IsADirectoryError | NotADirectoryError | PermissionError):
        # a path the user gave (--out a folder, a file they cannot write): theirs to fix
        path = exc.filename2 or exc.filename  # a rename's target, else the path
        return f"{exc.strerror}: {path}" if path else str(exc)
    return None


class NbaGroup(TyperGroup):
    """The root group: `--debug` accepted anywhere on the line, user errors on one line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if DEBUG_FLAG in args[1:]:  # `nba train --data X --debug` means `nba --debug train ...`
            args = [DEBUG_FLAG, *(a for a in args if a != DEBUG_FLAG)]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        debug = bool(ctx.params.get("debug")) or os.environ.get("NBA_DEBUG", "") not in ("", "0")
        if not debug:
            quiet_libraries()
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = None if debug else _message(exc)
            if message is None:
                raise
            command = ctx.invoked_subcommand or ctx.command_path
            prefix = command if command.startswith("nba") else f"nba {command}"
            sys.stdout.flush()
            typer.echo(f"{prefix}: {one_line(message)}", err=True)
            raise typer.Exit(code=USER_ERROR_EXIT) from None
