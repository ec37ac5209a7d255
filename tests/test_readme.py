"""The README's contract with a new user: it opens with the Quickstart, one ``sh`` block of two commands."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_opens_with_a_quickstart_of_two_commands():
    lines = README.read_text().splitlines()
    assert lines[0] == "## Quickstart"  # nothing above it, not even a note
    start = lines.index("```sh")
    assert all(not line.strip() for line in lines[1:start])  # the block comes first in the section
    block = lines[start + 1 : lines.index("```", start + 1)]
    commands = [line for line in block if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2 and commands[0].startswith("python3.11 -m venv") and "pytest" in commands[1]
