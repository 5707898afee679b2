"""`syncengine load ENTITY FILE`: an export file of each format, streamed through the pipeline; a line
that holds no record is reported with its number and the load goes on. Real processes, a SQLite file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from syncengine.exports import ExportReader
from tests import records
from tests.conftest import ENTITIES
from tests.test_cli import run

PROGRAMS = [records.program(str(1000 + i), Modified_Time=records.MODIFIED) for i in range(5)]


def lines(values: Sequence[object]) -> list[str]:
    return [json.dumps(value) for value in values]


BAD = '{"id": "1001", "Product_Name": "x",}'  # a trailing comma
#: Each format with a bad line 3 (its number is reported) and the four other programs (stored).
FILES = {
    "array.json": "[\n" + ",\n".join([*lines(PROGRAMS[:1]), BAD, *lines(PROGRAMS[2:])]) + "\n]\n",
    "pages.json": "\n".join(
        [
            '{"data": [',
            *lines(PROGRAMS[:1]),
            BAD + ",",
            ",\n".join(lines(PROGRAMS[3:])),
            '], "info": {"more_records": true, "next_page_token": "x]}"}}',
            json.dumps({"data": [PROGRAMS[2]], "info": {"more_records": False}}),
        ]
    ),
    "records.ndjson": "\n".join([*lines([PROGRAMS[0], PROGRAMS[2]]), BAD[:-2], json.dumps({"data": PROGRAMS[3:]})]),
    "export.csv": "Id,Product_Name,Program_Price,Status,Modified_Time,Owner.id,Owner.name\n"
    + "".join(
        f'{p["id"]},"{p["Product_Name"]}, Sr.",{p["Program_Price"]},Approved,{records.MODIFIED},1,Ann\n'
        if i != 1
        else f"{p['id']},{p['Product_Name']}\n"
        for i, p in enumerate(PROGRAMS)
    ),
}


@pytest.fixture
def database(tmp_path: Path) -> dict[str, str]:
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'load.db'}", "SYNCENGINE_ENTITIES": str(ENTITIES)}
    assert run("db", "upgrade", env=env).returncode == 0
    assert run("tenant", "add", "default", env=env).returncode == 0
    return env


@pytest.mark.parametrize("name", FILES)
def test_a_file_with_a_bad_line_is_loaded_but_that_line(name: str, database: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(FILES[name])
    loaded = run("load", "programs", str(path), env=database)
    assert loaded.returncode == 0, loaded.stderr
    assert f"{path}:3: " in loaded.stderr, loaded.stderr
    head, row, *rest = loaded.stdout.splitlines()
    assert head.split()[:9] == [
        "ENTITY",
        "NEW",
        "UPDATED",
        "UNCHANGED",
        "INVALID",
        "SKIPPED",
        "DELETED",
        "BAD",
        "LINES",
    ]
    assert row.split()[:9] == ["programs", "4", "0", "0", "0", "0", "0", "1", "4"]
    assert rest[0] == "programs: not applied:" and rest[1].startswith("  line 3: BAD LINE: ")
    if name.endswith(".csv"):  # its text values read as the JSON's: the same fingerprints
        again = run("load", "programs", str(path), env=database)
        assert again.stdout.splitlines()[1].split()[1:5] == ["0", "0", "4", "0"]  # UNCHANGED: the same values


def test_csv_values_are_read_as_zoho_exports_them(tmp_path: Path) -> None:
    path = tmp_path / "students.csv"
    path.write_text(
        '\ufeffId,First_Name,Program.id,Program.name,Birth_Date\n7,"Ay\u015fe, ""A""",1001,HND,\n8,Can,,,2001-02-03\n'
    )
    assert [(item.line, item.record) for item in ExportReader(path)] == [
        (2, {"id": "7", "First_Name": 'Ay\u015fe, "A"', "Program": "1001", "Birth_Date": None}),
        (3, {"id": "8", "First_Name": "Can", "Program": None, "Birth_Date": "2001-02-03"}),
    ]


def test_a_broken_array_ends_the_load_where_it_broke(database: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[\n" + ",\n".join(lines(PROGRAMS[:2])) + ',\n{"id": "1002", "Product_Name": "x"\n')
    loaded = run("load", "programs", str(path), env=database)
    assert loaded.returncode == 0, loaded.stderr
    assert f"{path}:4: unterminated JSON value: a missing }} or ]" in loaded.stderr
    assert loaded.stdout.splitlines()[1].split()[1] == "2"


def test_load_still_loads_a_folder_and_says_which_it_wants(database: dict[str, str], tmp_path: Path) -> None:
    assert run("load", "samples", env=database).returncode == 0
    missing = run("load", str(tmp_path / "nowhere.json"), env=database)
    assert (missing.returncode, missing.stderr) == (
        1,
        f"error: {tmp_path / 'nowhere.json'} is not a folder: `syncengine load FOLDER` loads each ENTITY.json of a "
        "folder, `syncengine load ENTITY FILE` one export file\n",
    )
    unknown = run("load", "programmes", "samples/programs.json", env=database)
    assert unknown.returncode == 3 and "unknown entity 'programmes' (known: programs, teachers" in unknown.stderr
