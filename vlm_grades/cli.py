"""The `vlm-grades` command. Each subcommand lives in vlm_grades/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from vlm_grades import __version__
from vlm_grades.errors import UserError

# Order is the order in `vlm-grades --help`.
COMMANDS = ["train", "eval", "score", "report", "compare", "replay", "components", "fetch", "export"]


class OneLineParser(argparse.ArgumentParser):
    """Errors are one line naming the flag; the usage block would bury it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vlm-grades",
        description="Vision-language fine-tuning with modality-aware gradient-based early stopping (GradES).",
    )
    parser.add_argument("--version", action="version", version=f"vlm-grades {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vlm_grades.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vlm_grades.commands.{name}":
                continue  # not built yet: absent from --help rather than a stub
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()   # here, where a closed pipe can be caught, not at the interpreter's exit
        return status
    except BrokenPipeError:
        # the reader went away (`vlm-grades ... | head`): stop quietly, as a command killed by SIGPIPE would;
        # stdout goes to /dev/null so the interpreter's last flush does not raise the error again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):   # a stdout without a file descriptor
            pass
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"vlm-grades {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlm-grades {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
