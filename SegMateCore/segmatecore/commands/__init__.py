"""One module per ``segmate`` subcommand (see segmatecore.cli)."""
from __future__ import annotations


def organ_list(text: str) -> list[str]:
    """``a,b,c`` -> ["a", "b", "c"]: the one syntax of organ lists in every command."""
    return [k.strip() for k in text.split(",") if k.strip()]
