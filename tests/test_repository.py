"""The repository stands on its own: no citation of documents outside it, and working contract links.

Pure checks over the files git knows about (tracked, plus new files not ignored): no database.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = "docs/" + "contract.md"

# Built from pieces so that this file does not match its own patterns.
_OUTSIDE = re.compile(
    "|".join(
        (
            r"\b" + "SP" + "EC" + r"\b",
            re.escape("SP" + "EC" + ".md"),
            re.escape(".." + "/shared"),
            re.escape("/" + "work" + "/"),
        )
    )
)
# A link to a section of the contract from any file, whatever the relative path before its name.
_CONTRACT_LINK = re.compile("contract" + r"\.md#([A-Za-z0-9_-]+)")
# A link to a section from inside the contract itself: a markdown link target that is only an anchor.
_SELF_LINK = re.compile(r"\]\(#([A-Za-z0-9_-]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")

SECTIONS = (
    "Bars",
    "Hygiene",
    "Triangle events",
    "The events table",
    "Writing, idempotency and faults",
    "Command line",
    "JSON output",
    "Exit codes",
    "Many symbols, strengths and workers",
    "Vendor files and continuous futures",
    "Keeping current",
    "Choices where the contract is silent",
)


def repository_files() -> list[Path]:
    """Files git tracks, plus new ones it does not ignore (what a commit would hold)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = sorted({n for n in out.decode().split("\0") if n})
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def text_lines(path: Path) -> list[str] | None:
    """The file's lines, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (but - and _), spaces to -."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(path: Path) -> list[tuple[int, str]]:
    """(level, text) of every markdown heading outside fenced code blocks."""
    found = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 … for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, text in headings(path):
        base = slug(text)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_no_citation_outside_the_repository() -> None:
    offending = []
    for path in repository_files():
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".ico", ".pdf"):
            continue
        lines = text_lines(path)
        if lines is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        offending += [f"{rel}:{no}" for no, line in enumerate(lines, 1) if _OUTSIDE.search(line)]
    assert not offending, (
        f"{len(offending)} line(s) cite documents outside the repository; "
        "state the rule or link docs/contract.md instead:\n" + "\n".join(offending)
    )


def test_contract_anchors_resolve() -> None:
    contract = ROOT / CONTRACT
    assert contract.is_file(), f"{CONTRACT} is missing"
    known = anchors(contract)
    broken = []
    for path in repository_files():
        lines = text_lines(path)
        if lines is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        pattern = _SELF_LINK if rel == CONTRACT else None
        for no, line in enumerate(lines, 1):
            refs = _CONTRACT_LINK.findall(line) + (pattern.findall(line) if pattern else [])
            broken += [f"{rel}:{no}: #{ref}" for ref in refs if ref not in known]
    assert not broken, f"links to sections {CONTRACT} does not have:\n" + "\n".join(broken)


def test_contract_has_the_sections() -> None:
    contract = ROOT / CONTRACT
    assert contract.is_file(), f"{CONTRACT} is missing"
    level_two = [text for level, text in headings(contract) if level == 2]
    missing = [s for s in SECTIONS if s not in level_two]
    assert not missing, f"{CONTRACT} lacks the section(s): {', '.join(missing)}"
    # The anchors code comments cite must be exactly these.
    assert {slug(s) for s in SECTIONS} <= anchors(contract)
    assert slug("Writing, idempotency and faults") == "writing-idempotency-and-faults"
