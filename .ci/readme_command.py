"""Print the README's first command (set up and train the quickstart), so CI runs what the README says.

The command is the first ```bash block of README.md's "Two commands" section, one line (CI runs it
with `bash -c`). With --shortened, the overrides the same section gives for a shortened quickstart
(its first inline code span that starts with ``train.max_steps=``) are appended: CI proves the set-up
in about a minute instead of the full run's five. Both come from README.md, so CI and README cannot drift.

    python3 .ci/readme_command.py [--shortened] README.md

Standard library only: CI runs it with the system Python before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTION = "## Two commands"
SHORTENED_PREFIX = "train.max_steps="
QUICKSTART = ".venv/bin/cl-run recipes/quickstart.yaml"
USAGE = "usage: python3 .ci/readme_command.py [--shortened] README.md"


class ReadmeError(ValueError):
    """The README lacks what CI needs; the message names the file, the line and the fix."""


def section_lines(text: str, path: str) -> list[tuple[int, str]]:
    """The (line number, line) pairs of the "Two commands" section, up to the next heading of its level."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == SECTION)
    except StopIteration:
        raise ReadmeError(f"{path}: no '{SECTION}' heading; CI reads the quickstart command from that section") from None
    section = []
    for number, line in enumerate(lines[start + 1:], start=start + 2):
        if line.startswith("## "):
            break
        section.append((number, line))
    return section


def first_command(text: str, path: str = "README.md") -> str:
    """The single line of the first ```bash block of the "Two commands" section; it must run the quickstart last."""
    section = section_lines(text, path)
    opening = next((i for i, (_, line) in enumerate(section) if line.strip() == "```bash"), None)
    if opening is None:
        raise ReadmeError(f"{path}: no ```bash block under '{SECTION}'; the first one is the quickstart command")
    body = []
    for number, line in section[opening + 1:]:
        if line.strip() == "```":
            break
        if line.strip():
            body.append((number, line.strip()))
    else:
        raise ReadmeError(f"{path}:{section[opening][0]}: the ```bash block is not closed")
    if len(body) != 1:
        where = body[0][0] if body else section[opening][0]
        raise ReadmeError(f"{path}:{where}: the quickstart command must be one line (joined with &&), "
                          f"found {len(body)} lines")
    number, command = body[0]
    if not command.endswith(QUICKSTART):
        raise ReadmeError(f"{path}:{number}: the quickstart command must end with `{QUICKSTART}`, so "
                          "overrides can be appended to it")
    return command


def shortened_overrides(text: str, path: str = "README.md") -> str:
    """The README's overrides for a shortened quickstart: the section's first `train.max_steps=...` code span."""
    for _, line in section_lines(text, path):
        for span in re.findall(r"`([^`]+)`", line):
            if span.startswith(SHORTENED_PREFIX):
                return span
    raise ReadmeError(f"{path}: no inline code span starting with `{SHORTENED_PREFIX}` under '{SECTION}'; "
                      "CI appends those overrides to the quickstart command to shorten it")


def main(argv: list[str]) -> int:
    """Print the command (with the shortened run's overrides with --shortened); exit 2 on a README error."""
    shortened = "--shortened" in argv
    paths = [a for a in argv if a != "--shortened"]
    if len(paths) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    path = paths[0]
    text = Path(path).read_text(encoding="utf-8")
    try:
        command = first_command(text, path)
        if shortened:
            command = f"{command} {shortened_overrides(text, path)}"
    except ReadmeError as error:
        print(f"readme_command: {error}", file=sys.stderr)
        return 2
    print(command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
