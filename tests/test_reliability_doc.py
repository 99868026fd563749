"""RELIABILITY.md stays true: every test its tables name exists, and each row's `cases`
count is what pytest collects for the tests of that row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE = re.compile(r"`(tests/[\w/]+\.py::\w+)`")


def _rows() -> list[tuple[list[str], int]]:
    """(test node ids, cases) of every table row whose last cell is a count."""
    rows = []
    for line in (REPO / "RELIABILITY.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[-1].isdigit() and NODE.search(line):
            rows.append((NODE.findall(line), int(cells[-1])))
    return rows


def test_reliability_tables_name_existing_tests_with_their_counts() -> None:
    rows = _rows()
    assert len(rows) >= 10, "RELIABILITY.md lost its bad-input and security tables"
    nodes = sorted({n for ids, _ in rows for n in ids})
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", *nodes], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, f"a test named in RELIABILITY.md is missing:\n{res.stdout}" \
        f"{res.stderr}"
    collected = [line.split("[")[0] for line in res.stdout.splitlines() if "::" in line]
    for ids, cases in rows:
        got = sum(collected.count(n) for n in ids)
        assert got == cases, f"RELIABILITY.md says {cases} cases for {ids}, pytest has {got}"
