"""One module per ``segmate`` subcommand (see segmatecore.cli.main), and the options they share.

A module's top level and its ``register`` import nothing heavy: building the parser for ``--help``
must not import PyTorch. Each command imports the engine inside its ``run`` function.
"""
from __future__ import annotations

from segmatecore.choices import DEVICE_DEFAULT, DEVICE_HELP


def organ_list(text: str) -> list[str]:
    """``a,b,c`` -> ["a", "b", "c"]: the one syntax of organ lists in every command."""
    return [k.strip() for k in text.split(",") if k.strip()]


def add_organs_option(parser, help_text: str, flag: str = "--organs"):
    """An organ list option in the one syntax every command shares (comma-separated keys)."""
    return parser.add_argument(flag, type=organ_list, default=None, metavar="KEY,KEY,...", help=help_text)


def add_device_option(parser, what: str = "device to run the network on"):
    """``--device`` with the one default every command shares (``auto``)."""
    return parser.add_argument("--device", default=DEVICE_DEFAULT,
                               help=f"{what}: {DEVICE_HELP} (default: %(default)s)")
