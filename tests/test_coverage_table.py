"""tests/RELIABILITY_COVERAGE.md names real tests for every case of RELIABILITY.md and of issue 20.

`test_no_case_is_pending` fails while a row still says PENDING: it lists the gaps.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests" / "RELIABILITY_COVERAGE.md"
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
DEFECTS_HEADING = "## Issue 20 defects"


def rows() -> dict[str, list[dict]]:
    """{"reliability": [...], "defects": [...]}, each row {"case", "tests", "checks"} as written."""
    out, table = {"reliability": [], "defects": []}, "reliability"
    for line in TABLE.read_text().splitlines():
        if line.startswith(DEFECTS_HEADING):
            table = "defects"
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("Case", "Defect"):
            continue  # a header row
        assert len(cells) == 4, f"a row needs 4 cells: {line}"
        out[table].append({"case": cells[0], "tests": cells[2], "checks": cells[3]})
    return out


def test_every_case_has_one_row():
    tables = rows()
    cases = [r["case"] for r in tables["reliability"]]
    assert sorted(cases) == sorted([str(n) for n in range(1, 37)] + ["Deployment defaults"]), cases
    assert sorted(r["case"] for r in tables["defects"]) == sorted(str(n) for n in range(1, 14))


def test_every_named_test_exists():
    named = 0
    for table in rows().values():
        for row in table:
            for file, name in REF.findall(row["tests"]):
                path = ROOT / file
                assert path.is_file(), f"case {row['case']}: no file {file}"
                assert re.search(rf"^def {name}\(", path.read_text(), re.M), f"case {row['case']}: no {file}::{name}"
                named += 1
    assert named >= 29


def test_no_row_is_empty():
    for table in rows().values():
        for row in table:
            assert row["tests"], f"case {row['case']} has no test and does not say PENDING"
            if row["tests"] != "PENDING":
                leftover = REF.sub("", row["tests"]).replace("<br>", "").strip()
                assert REF.search(row["tests"]) and not leftover, f"case {row['case']}: {row['tests']!r}"
                assert row["checks"], f"case {row['case']} does not say what its tests check"


def test_no_case_is_pending():
    pending = [f"{name} {row['case']}" for name, table in rows().items() for row in table if "PENDING" in row["tests"]]
    assert not pending, f"no test is named yet for: {', '.join(pending)}"
