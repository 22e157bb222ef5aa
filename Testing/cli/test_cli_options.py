"""The command line explains itself: one syntax for organ lists and devices, grouped and defaulted
help, exit codes, and a help that answers without importing PyTorch."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from segmatecore.cli import main as cli
from segmatecore.hub.catalogue import catalogue_path


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every ``segmate`` subcommand's parser (nested ones such as ``models list`` included), by name."""
    found = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix}{name}".strip()] = child
                    walk(child, f"{prefix}{name} ")

    walk(cli.build_parser(), "")
    return found


PARSERS = subcommand_parsers()


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


WITH_ORGANS = sorted(name for name, p in PARSERS.items() if option(p, "--organs"))
WITH_DEVICE = sorted(name for name, p in PARSERS.items() if option(p, "--device"))


def test_the_commands_that_run_a_network_all_offer_organs_and_device():
    assert {"predict", "evaluate", "train", "finetune"} <= set(WITH_ORGANS)
    assert {"predict", "evaluate", "train", "finetune", "calibrate", "bench"} <= set(WITH_DEVICE)


@pytest.mark.parametrize("command", WITH_ORGANS)
def test_organs_parse_the_same_way_in_every_command(command):
    action = option(PARSERS[command], "--organs")
    assert action.default is None  # None: the command's own default set of organs
    assert action.type("liver, aorta,,spinal_cord ") == ["liver", "aorta", "spinal_cord"]
    assert action.metavar == "KEY,KEY,..."


@pytest.mark.parametrize("command", WITH_DEVICE)
def test_device_has_the_same_default_and_help_in_every_command(command):
    action = option(PARSERS[command], "--device")
    assert action.default == "auto"
    assert "auto (CUDA if available" in action.help and "(default: %(default)s)" in action.help


def test_organs_and_device_reach_the_command_as_parsed():
    args = cli.build_parser().parse_args(["evaluate", "--model", "m", "--data", "d", "-o", "o",
                                          "--organs", "liver,aorta"])
    assert args.organs == ["liver", "aorta"] and args.device == "auto"


def predict_help() -> str:
    return PARSERS["predict"].format_help()


def test_predict_help_groups_the_options_and_shows_every_default():
    text = predict_help()
    for group in ("basics:", "outputs:", "speed and memory:", "advanced:"):
        assert f"\n{group}\n" in text
    assert text.index("basics:") < text.index("outputs:") < text.index("speed and memory:") < text.index("advanced:")
    predict = PARSERS["predict"]
    for action in predict._actions:
        if action.option_strings and action.dest != "help" and not action.required:
            assert "(default:" in (action.help or ""), action.option_strings


def test_predict_help_lists_the_default_models_organs_and_the_exit_codes():
    catalogue = json.loads(catalogue_path().read_text(encoding="utf-8"))
    default = next(m for m in catalogue["models"] if m["id"] == catalogue["default_model"])
    text = " ".join(predict_help().split())  # argparse wraps lines
    assert default["id"] in text
    assert ", ".join(default["organs"]) in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in predict_help()
    assert "130 interrupted" in text


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"]])
def test_help_imports_no_torch(argv):
    code = ("import sys\n"
            "from segmatecore.cli import main as cli\n"
            "try:\n"
            f"    cli.main({argv!r})\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n"
            "heavy = [m for m in ('torch', 'torchvision', 'timm', 'highdicom') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "usage: segmate" in run.stdout


def test_the_option_values_the_parser_offers_are_the_engines():
    from segmatecore import choices
    from segmatecore.models.encoder import BACKBONES
    from segmatecore.bench.peers import PEERS

    assert tuple(PEERS) == choices.PEER_KEYS
    assert set(choices.BENCH_BACKBONES) <= {spec.key for spec in BACKBONES.values()}
