"""The README's first minute, run as a newcomer runs it: each command of its console
block on a fresh database, each printed line checked against what the README shows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import not_run
from tests.processes import earmark_env, serving

ROOT = Path(__file__).resolve().parent.parent
# What the README leaves out ("…") and the values a later command reuses.
_ELIDED = "…"
_CAPTURED = re.compile(r"\b(?:ten|key|bud)_[0-9A-Z]{26}\b|\bsk-bf-[0-9A-Za-z]+")


def first_minute() -> list[tuple[str, list[str]]]:
    """The console block of "The first minute": (command, lines it prints) in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The first minute") :]
    block = section[section.index("```console\n") + len("```console\n") :]
    block = block[: block.index("```")]
    steps: list[tuple[str, list[str]]] = []
    continued = False
    for line in block.splitlines():
        if line.startswith("$ ") or continued:
            command = line.removeprefix("$ ") if not continued else line
            if continued:
                steps[-1] = (steps[-1][0] + "\n" + command, [])
            else:
                steps.append((command, []))
            continued = line.endswith("\\")
        else:
            steps[-1][1].append(line)
    return steps


def _pattern(expected: list[str]) -> re.Pattern[str]:
    """A line of just ``…`` stands for any lines; ``…`` in a line for any text. Runs of
    spaces are one space, so a table's column widths need not be copied exactly."""
    parts = []
    for line in expected:
        if line.strip() == _ELIDED:
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        words = [re.escape(word).replace(_ELIDED, "[^\n]*?") for word in line.split()]
        parts.append(" ".join(words) + "\n")
    return re.compile("".join(parts))


def _normalised(output: str) -> str:
    return "".join(" ".join(line.split()) + "\n" for line in output.splitlines())


def _placeholders(command: str, seen: dict[str, str], base: str, earmark: str) -> str:
    command = command.replace("localhost:8080", base.removeprefix("http://"))
    command = command.replace(".venv/bin/earmark", earmark)
    for prefix, value in seen.items():
        command = command.replace(prefix + _ELIDED, value)
    assert _ELIDED not in command, f"no value yet for a placeholder in {command!r}"
    return command


def test_the_readme_block_is_parsed_as_commands_and_their_output():
    steps = first_minute()
    commands = [command.split()[1] for command, _ in steps]
    assert commands[:2] == ["tenants", "keys"] and "curl" in {c.split()[0] for c, _ in steps}
    assert all(expected for _, expected in steps), "every command shows what it prints"


def test_the_first_minute_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """With no configuration (the local engine), on a fresh database; the server is the
    one `make run` starts, on a free port instead of 8080."""
    if not shutil.which("curl"):
        not_run("curl is not installed: the README's first minute NOT RUN")
    env = earmark_env(f"sqlite+aiosqlite:///{tmp_path / 'earmark.db'}")
    earmark = str(Path(sys.executable).with_name("earmark"))
    seen: dict[str, str] = {}
    with serving(env, tmp_path / "earmark.log") as base:
        for command, expected in first_minute():
            ran = subprocess.run(
                ["bash", "-o", "pipefail", "-c", _placeholders(command, seen, base, earmark)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
            )
            assert ran.returncode == 0, f"{command}\n{ran.stdout}"
            printed = _normalised(ran.stdout)
            assert _pattern(expected).fullmatch(printed), (
                f"{command} printed:\n{ran.stdout}\nthe README shows:\n" + "\n".join(expected)
            )
            for value in _CAPTURED.findall(ran.stdout):
                prefix = value[: value.index("_") + 1] if "_" in value[:4] else "sk-bf-"
                seen.setdefault(prefix, value)
