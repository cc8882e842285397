"""The front door cannot drift: README.md names every --method, every top-level file and every exercise and
stays short, and each tool's --help shows each option's default once. The names are read from the code
(train.py's --method choices, the files on disk), never from a list kept here."""
import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["train", "eval", "prepare", "merge", "generate"]


class Parsed(Exception):
    """Raised in place of parsing, carrying the parser a tool built."""


def parser_of(tool, monkeypatch):
    """The argparse parser that `tool` builds, caught as it is about to parse (nothing else runs)."""
    def caught(self, args=None, namespace=None):
        raise Parsed(self)
    module = importlib.import_module(tool)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    with pytest.raises(Parsed) as e:
        (module.main if tool == "prepare" else module.parse_args)([])
    return e.value.args[0]


def readme():
    return (ROOT / "README.md").read_text(encoding="utf-8")


def table_rows(text, header):
    """The rows of the table whose header line starts with `header` (none when there is no such table)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), len(lines))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def drift(text, methods):
    """What README.md `text` fails to name: each a line that says what and where."""
    missing = []
    files = table_rows(text, "| file |")
    results = table_rows(text, "| Method |")
    for method in methods:
        if not any(re.search(rf"\b{method}\b", row, re.IGNORECASE) for row in files):
            missing.append(f"--method {method}: not in the file table")
        if not any(row.lower().startswith(f"| {method} ") for row in results):
            missing.append(f"--method {method}: no row in the results table")
    for path in sorted(ROOT.glob("*.py")):
        if not any(row.startswith(f"| [`{path.name}`]") for row in files):
            missing.append(f"{path.name}: no row in the file table")
    exercises = table_rows(text, "| exercise |")
    for path in sorted((ROOT / "exercises").glob("*.py")):
        if path.stem not in ("grade", "__init__") and not any(
                f"`python -m exercises.grade {path.stem}`" in row for row in exercises):
            missing.append(f"exercises/{path.name}: no row with `python -m exercises.grade {path.stem}`")
    if len(text.splitlines()) > 200:
        missing.append(f"README.md has {len(text.splitlines())} lines, more than 200")
    return missing


def test_readme_names_every_method_file_and_exercise(monkeypatch):
    methods = next(a.choices for a in parser_of("train", monkeypatch)._actions if "--method" in a.option_strings)
    assert "hilora" in methods and "pera" in methods  # the choices were found
    assert drift(readme(), methods) == []


def test_the_drift_check_sees_a_deleted_line(monkeypatch):
    """Deleting any one method's line from a table, or an exercise's row, is caught; so is a README too long."""
    methods = next(a.choices for a in parser_of("train", monkeypatch)._actions if "--method" in a.option_strings)
    text = readme()
    lines = text.splitlines()
    results = table_rows(text, "| Method |")
    for method in methods:  # its rows in the results table deleted (PERA has three)
        kept = "\n".join(line for line in lines if not (line in results and line.lower().startswith(f"| {method} ")))
        assert drift(kept, methods) == [f"--method {method}: no row in the results table"]
    hira_row = next(line for line in lines if line.startswith("| [`hira.py`]"))
    assert "--method hilora: not in the file table" in drift(text.replace(hira_row, "| [`hira.py`](hira.py) |"),
                                                             methods)
    exercise = next(line for line in lines if "`python -m exercises.grade kv_cache`" in line)
    assert drift(text.replace(exercise + "\n", ""), methods) == [
        "exercises/kv_cache.py: no row with `python -m exercises.grade kv_cache`"]
    assert drift(text + "\n" * 200, methods)[-1].endswith("more than 200")


def option_entries(parser):
    """Each option's action and its --help entry (its lines joined; printed wide, an entry wraps only after a
    long invocation)."""
    text, entries, current = parser.format_help(), {}, None
    for line in text[text.index("\noptions:\n"):].splitlines()[2:]:
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line.strip()
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {a.option_strings[0]: (a, entries[a.option_strings[0]]) for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS}


@pytest.mark.parametrize("tool", TOOLS)
def test_help_shows_each_default_once(tool, monkeypatch):
    """No option says its default twice (argparse's `(default: None)` after a written one); every option with a
    value by default shows it, as `default: VALUE` (a flag's default, off, and a None shown in words are exempt)."""
    monkeypatch.setenv("COLUMNS", "1000")
    entries = option_entries(parser_of(tool, monkeypatch))
    assert len(entries) >= 4
    for flag, (action, entry) in entries.items():
        assert len(re.findall(r"\(default\b", entry)) <= 1 and entry.count("default:") <= 1, f"{tool} {flag}: {entry}"
        if action.default is not None and action.default is not argparse.SUPPRESS and action.nargs != 0:
            assert f"default: {action.default}" in entry, f"{tool} {flag} does not show its default: {entry}"
