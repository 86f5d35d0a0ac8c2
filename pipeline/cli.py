"""The `python -m pipeline` command line: one sub-command per module in pipeline/commands/ (plus flows/commands.py,
added by pipeline/__main__.py)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from maskformer_core.errors import CheckpointError, ConfigError, DataError
from pipeline.errors import UserError

# Each module defines register(subparsers) and sets `func` on its parser(s).
COMMAND_MODULES = [
    "pipeline.commands.model_stats",
    "pipeline.commands.model_stats_table",
    "pipeline.commands.evaluate_files",
    "pipeline.commands.data",
    "pipeline.commands.train",
    "pipeline.commands.evaluate",
    "pipeline.commands.convert",
    "pipeline.commands.grid",
    "pipeline.commands.models",
    "pipeline.commands.tables",
    "pipeline.commands.report",
    "pipeline.commands.status",
    "pipeline.commands.services",
    "pipeline.commands.checkpoint",
]


def build_parser(extra_modules: Sequence[ModuleType] = ()) -> argparse.ArgumentParser:
    """The parser of every command in COMMAND_MODULES, then of `extra_modules` (the flows layer's commands,
    added by the entry point pipeline/__main__.py: this module never imports flows)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="MaskFormer reproducibility pipeline: data, training, evaluation, the study grid, tables and report.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # a missing or broken command module is an error, never a silent gap
    for module in [importlib.import_module(name) for name in COMMAND_MODULES] + list(extra_modules):
        module.register(sub)
    return parser


class _LevelFormatter(logging.Formatter):
    """`warning: <message>` lines on stderr, like the `error: <message>` line of a refused command."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _configure_logging() -> None:
    """Warnings of the packages (counted data warnings, checkpoint fallbacks, restarts) reach stderr."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LevelFormatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


# Commands whose --params file defines the project: relative paths in it (study.runs_root, data_root,
# the default MLflow store, dvc.lock) and the commands' own default paths (reports/, runs/) mean the
# params file's folder, from wherever the command is run.
PROJECT_COMMANDS = ("study", "tables", "status", "report", "grid", "train", "model-stats-table")
# Paths given on the command line stay relative to the folder the command was run from.
PATH_FLAGS = {"--reports": "reports", "--runs-root": "runs_root", "--out": "out", "--config": "config",
              "--checkpoint": "checkpoint", "--output": "output", "--output-dir": "output_dir", "--tables": "tables",
              "--plan": "plan"}


def _enter_project(args: argparse.Namespace, argv: list[str]) -> None:
    """Run in the --params file's folder, so every command resolves params paths the same way (issue 15).

    Explicit path arguments are made absolute first (they were meant relative to where the user stood).
    No-op when the params file is in the current folder or does not exist (load_params names it later).
    """
    params = getattr(args, "params", None)
    if args.command not in PROJECT_COMMANDS or not params or not Path(params).is_file():
        return
    if args.command == "train" and not getattr(args, "experiment", None):
        return  # `train --config` reads no params file
    folder = Path(params).resolve().parent
    if folder == Path.cwd().resolve():
        return
    given = {dest for flag, dest in PATH_FLAGS.items() if any(a == flag or a.startswith(flag + "=") for a in argv)}
    for dest in given:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value:
            setattr(args, dest, str(Path(value).resolve()))
    args.params = str(Path(params).resolve())
    os.chdir(folder)


def main(argv: list[str] | None = None, extra_modules: Sequence[ModuleType] = ()) -> int:
    parser = build_parser(extra_modules)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    _configure_logging()
    _enter_project(args, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only or full disk, no permission: one line naming the path, no traceback
        if exc.filename is None:
            raise
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        print(f"error: {where}: {exc.strerror or exc} (errno {exc.errno})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
