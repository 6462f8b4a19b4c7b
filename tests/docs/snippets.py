"""The code blocks of the documentation, as the docs test runs them.

Every ```bash/```sh/```shell/```console/```python block in README.md and docs/ carries a marker on the line above:

    <!-- test: run -->              runs, in order with the page's other blocks, in one temporary directory
    <!-- test: run servers -->      the same, and the page needs the real Kafka and PostgreSQL (scripts/test)
    <!-- test: output -->           (before a ```text block) lines the previous run block must print, in order;
                                    (`...` marks elided lines)
    <!-- test: skip REASON -->      not run; the test reports it as skipped, with the reason

A runnable block without a marker fails the test: no snippet is skipped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNNABLE = {"bash", "sh", "shell", "console", "python", "py"}
MARKER = re.compile(r"^<!--\s*test:\s*(run servers|run|output|skip)\b\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository
    line: int  # line of the opening fence, 1-based
    language: str
    kind: str  # run, run servers, output, skip, or "" (unmarked)
    reason: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.kind in ("run", "run servers")


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index].strip())
        if not opening:
            index += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        previous = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous)
        found.append(Block(page=str(page.relative_to(REPO)), line=index + 1, language=language,
                           kind=marker.group(1) if marker else "", reason=marker.group(2) if marker else "",
                           code="\n".join(lines[index + 1:end]) + "\n"))
        index = end + 1
    return found


def problems(page_blocks: list[Block]) -> list[str]:
    """Markers that are missing or do not fit their block."""
    found = []
    for number, block in enumerate(page_blocks):
        if block.language in RUNNABLE and not block.kind:
            found.append(f"{block.where}: a ```{block.language} block without a `<!-- test: ... -->` marker")
        elif block.kind == "output" and (number == 0 or not page_blocks[number - 1].runs):
            found.append(f"{block.where}: an output block that does not follow a block that runs")
        elif block.kind == "skip" and not block.reason:
            found.append(f"{block.where}: a skipped block must say why")
        elif block.runs and block.language not in RUNNABLE:
            found.append(f"{block.where}: `{block.language or 'no language'}` blocks cannot run")
    return found


BEGIN = "@@docs-block {}@@"


def script(page_blocks: list[Block], python: str) -> str:
    """One bash script for a page's runnable blocks, each announced by a marker line; background jobs a page
    starts are stopped when the script ends, however it ends."""
    parts = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT"]
    for number, block in enumerate(page_blocks):
        if not block.runs:
            continue
        parts.append(f"echo '{BEGIN.format(number)}'")
        if block.language in ("python", "py"):
            parts.append(f"{python} - <<'__BACKSTOP_DOCS_PYTHON__'\n{block.code}__BACKSTOP_DOCS_PYTHON__")
        else:
            parts.append(block.code.rstrip("\n"))
    return "\n".join(parts) + "\n"


def outputs(log: str) -> dict[int, str]:
    """Block number -> what it printed (stdout and stderr)."""
    result: dict[int, str] = {}
    current: int | None = None
    for line in log.splitlines():
        marker = re.fullmatch(r"@@docs-block (\d+)@@", line)
        if marker:
            current = int(marker.group(1))
            result[current] = ""
        elif current is not None:
            result[current] += line + "\n"
    return result


def missing_output(expected: str, actual: str) -> str | None:
    """The first expected line not found in `actual` after the lines found before it (`...` lines are skipped:
    they mark elided output)."""
    actual_lines = [line.rstrip() for line in actual.splitlines()]
    position = 0
    for wanted in (line.rstrip() for line in expected.splitlines()):
        if wanted == "...":
            continue
        try:
            position = actual_lines.index(wanted, position) + 1
        except ValueError:
            return wanted
    return None
