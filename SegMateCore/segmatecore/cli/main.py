"""The ``segmate`` command line: parses arguments and calls the library; no logic of its own.

Each subcommand lives in ``segmatecore.cli.commands.<name>`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int`` (the exit code).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys

from segmatecore import __version__

COMMANDS = [
    "info",
    "import_research",
    "predict",
    "prepare",
    "train",
    "finetune",
    "fit_presence",
    "calibrate",
    "evaluate",
    "models",
    "bench",
]


EXIT_CODES = """exit codes:
  0    done
  1    the command ran but part of its work failed (e.g. some case of segmate predict)
  2    usage error: a bad option or value, an unknown organ, model or device, an unreadable input
  130  interrupted (Ctrl-C)

'segmate COMMAND --help' describes a command's options."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; building it imports no PyTorch (commands import it when they run)."""
    parser = argparse.ArgumentParser(prog="segmate", description="SegMate: lightweight organ-at-risk segmentation of CT.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"segmate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"segmatecore.cli.commands.{name}").register(sub)
    return parser


class UserError(Exception):
    """An error whose message is all the user needs: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "segmate " + shlex.join(argv)  # what a model's provenance records
    level = logging.DEBUG if args.verbose else logging.ERROR if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when an earlier call in this process configured logging
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as exc:
        if args.verbose:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"segmate {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segmate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
