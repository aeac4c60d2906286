"""docs/commands.md: its examples run, and it documents every option of every command."""

from __future__ import annotations

import argparse
import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from scrapy.commands import ScrapyCommand
from scrapy.settings import Settings

from tests.helpers import distinct_images, encode

from .conftest import Filled

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
COMMANDS = ("imgcache-similar", "imgcache-stats", "imgcache-dupes", "imgcache-import", "imgcache-gc", "imgcache-verify")


def _sections() -> dict[str, str]:
    """Command name -> the text of its ``## `scrapy imgcache-…`` section."""
    parts = re.split(r"^## `scrapy (imgcache-[a-z]+)[^`]*`$", DOC.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _examples() -> list[str]:
    return re.findall(r"^\$ scrapy (imgcache-.*)$", DOC.read_text(encoding="utf-8"), flags=re.M)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_documented_with_its_default(name: str):
    (entry,) = [e for e in entry_points(group="scrapy.commands") if e.name == name]
    command = entry.load()()
    command.settings = Settings()
    parser, scrapys = argparse.ArgumentParser(add_help=False), argparse.ArgumentParser(add_help=False)
    command.add_options(parser)
    ScrapyCommand.add_options(command, scrapys)  # Scrapy's global options are Scrapy's to document
    global_options = {o for a in scrapys._actions for o in a.option_strings}
    own = [a for a in parser._actions if not global_options & set(a.option_strings)]
    assert own
    section = _sections()[name]
    for action in own:
        option = max(action.option_strings, key=len)
        row = next((line for line in section.splitlines() if line.startswith(f"| `{option}")), None)
        assert row is not None, f"{name} {option} has no row in its options table"
        assert row.count("|") >= 4, row  # option | default | meaning


def test_examples_run(filled: Filled):
    """Every example that needs no network runs and ends with 0 or 1 (never a usage error)."""
    root = filled.project.root
    (root / "photo.jpg").write_bytes(filled.query_bytes)
    (root / "old_images" / "full").mkdir(parents=True)
    (root / "old_images" / "full" / "a.jpg").write_bytes(encode(distinct_images(7)[6]))
    (root / "old_images" / "notes.txt").write_text("not an image\n")
    examples = [e for e in _examples() if "://" not in e and e.split()[0] in COMMANDS]  # this module's commands
    assert len(examples) >= 10 and {e.split()[0] for e in examples} == set(COMMANDS)
    for example in examples:
        args = shlex.split(example)
        if ">" in args:  # a redirect to a file
            args, target = args[: args.index(">")], root / args[args.index(">") + 1]
        else:
            target = None
        proc = filled.project.run(*args)
        assert proc.returncode in (0, 1), (example, proc.stdout, proc.stderr)
        if target is not None:
            target.write_text(proc.stdout)
    assert (root / "sheet.html").exists() and (root / "dupes.html").exists()
