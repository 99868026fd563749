"""What a new user read and typed in their first hour (issue 17.8): the README's status
example is the real table, the commands explain their arguments."""

from __future__ import annotations

import re
from pathlib import Path

from smallcell import cli
from smallcell.status import HEADER

REPO = Path(__file__).resolve().parents[1]


def test_readme_status_example_is_the_real_table() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("```\n" + HEADER + "\n", 1)
    assert len(block) == 2, "README's status example must start with status.HEADER"
    example = block[1].split("```", 1)[0].splitlines()
    assert any(line.startswith("converged: ") and "potential: iter/" in line
               for line in example)
    cost = [line for line in example if line.startswith("cost: ")]
    assert cost and re.fullmatch(
        r"cost: \d+ reference calculations in all: \d+ training labels \(\d+ more failed\), "
        r"\d+ for the error sample, \d+ for the large-cell validation; [\d.]+ DFT "
        r"core-hours \(GPAW cost model\), [\d.]+ h of it for training labels", cost[0])


def _help(*words: str) -> str:
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    return sub.choices[words[0]].format_help()


def test_every_run_command_explains_config_and_clean_iter_its_argument() -> None:
    for command in ("iter", "submit", "pilot", "validate"):
        text = " ".join(_help(command).split())
        assert "--config CONFIG the run's config file (default: the one the run was " \
            "started with" in text, command
        assert "--change-config" in text
    text = " ".join(_help("clean-iter").split())
    assert "I the first iteration to remove" in text and "--force do not ask" in text
