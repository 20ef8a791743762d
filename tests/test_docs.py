"""The repository is self-contained and its document references resolve.

A bare ``§N.M`` anywhere in the repository means section N.M of docs/protocol.md
(docs/README.md); a ``§`` right after an RFC number is that RFC's.  Every such
reference must name a heading of docs/protocol.md, every ``architecture.md,
Title`` reference a heading of docs/architecture.md, every repository path the
documents name must exist, and no file may point outside the repository (the
suite must pass from a clone placed anywhere).  This file is the one file not
searched: its examples of broken references are there to fail.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
THIS = Path(__file__).resolve()

#: Directories that are not part of the source when the tree is walked without git.
_SKIP_DIRS = {".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}

#: ``§7.4``, ``§7.4.``, and the second end of a range written ``§7.4-7.5`` (hyphen or en dash).
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)(?:\s*[-\u2013]\s*(\d+(?:\.\d+)*))?")
#: ``protocol.md section 8`` or ``protocol.md 8``: a reference in words.
_SECTION_WORDS = re.compile(r"protocol\.md,?\s+(?:section\s+)?(\d+(?:\.\d+)*)")
#: ``RFC 6347 §4.2.1`` or ``RFC 6347 / RFC 5246 §6.2.3``: another document's section.
_RFC_BEFORE = re.compile(r"RFC\s*\d+(?:\s*(?:/|,|and)\s*RFC\s*\d+)*\s*$")
#: ``(architecture.md, Metrics)``, ``architecture.md, "Locust and trio: ..."``, ``architecture.md (Metrics)``.
_ARCH_REF = re.compile(r"architecture\.md(?:,|\s*\()\s*(?:#\s*)?\"?([A-Za-z][^\",).:\n]*)")
#: A repository path inside backticks in a document.
_REPO_PATH = re.compile(
    r"`((?:loadgen|tests|benchmarks|scenarios|scripts|dashboards|docs|docker)/[^`\s*{}<>]*)`"
)
#: Paths protocol.md names inside other projects (openconnect's tests, §13).
_FOREIGN_PATHS = {"tests/bad_dtls_test.c", "tests/fake-cisco-server.py"}
#: A numbered heading: ``## 7. DTLS`` is section 7, ``### 7.4 Legacy ...`` section 7.4.
_HEADING_NUMBER = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.M)
#: Where the team's notes lived before the repository carried its own copies (spelt in
#: pieces, so that this file does not name them itself)
_SHARED = "shared"
OUTSIDE_MARKERS = ("/" + "work/", "../" + _SHARED, _SHARED + "/docs", _SHARED + "/seed")


def protocol_sections(text: str) -> set[str]:
    """The numbers of the headings of protocol.md (``## 7.`` gives ``7``, ``### 7.4`` ``7.4``)."""
    return set(_HEADING_NUMBER.findall(text))


def heading_titles(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,4}\s+(.+)$", text, re.M)]


def section_references(text: str) -> Iterator[tuple[int, str]]:
    """(line number, section number) of every reference to protocol.md in ``text``."""
    for m in _SECTION.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if _RFC_BEFORE.search(text[line_start : m.start()]):
            continue
        line = text.count("\n", 0, m.start()) + 1
        yield line, m.group(1)
        if m.group(2):
            yield line, m.group(2)
    for m in _SECTION_WORDS.finditer(text):
        yield text.count("\n", 0, m.start()) + 1, m.group(1)


def unresolved_sections(text: str, sections: set[str]) -> list[tuple[int, str]]:
    return [(line, ref) for line, ref in section_references(text) if ref not in sections]


def unresolved_architecture(text: str, titles: list[str]) -> list[tuple[int, str]]:
    lowered = [t.lower() for t in titles]
    out = []
    for m in _ARCH_REF.finditer(text):
        title = m.group(1).strip().lower()
        if not any(t.startswith(title) for t in lowered):
            out.append((text.count("\n", 0, m.start()) + 1, m.group(1).strip()))
    return out


def outside_references(text: str) -> list[tuple[int, str]]:
    return [
        (number, marker)
        for number, line in enumerate(text.splitlines(), 1)
        for marker in OUTSIDE_MARKERS
        if marker in line
    ]


def _tracked_files() -> list[Path]:
    try:
        proc = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=False
        )
    except FileNotFoundError:
        proc = None
    if proc is not None and proc.returncode == 0 and proc.stdout:
        names = proc.stdout.decode().split("\0")
        return [ROOT / n for n in names if n and (ROOT / n).is_file()]
    # Not a git checkout (an unpacked archive): every file but caches and build output.
    return [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and not _SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)
    ]


def _texts() -> dict[Path, str]:
    out = {}
    for path in _tracked_files():
        if path == THIS:
            continue  # its own examples of broken references are meant to fail
        try:
            out[path] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
    return out


@pytest.fixture(scope="module")
def texts() -> dict[Path, str]:
    found = _texts()
    assert ROOT / "loadgen" / "__init__.py" in found, "the tree walk found no source files"
    return found


def _report(problems: dict[Path, list[tuple[int, str]]]) -> str:
    return "\n".join(
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path, found in sorted(problems.items())
        for line, what in found
    )


def test_documents_are_in_the_repository() -> None:
    for name in ("README.md", "protocol.md", "architecture.md", "style.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    assert (ROOT / "tests/proto/dtls/vectors/protocol-test-vectors.json").is_file()


def test_protocol_headings_are_unique() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    numbers = _HEADING_NUMBER.findall(text)
    assert len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)
    # The sections the code cites most; a renumbering would show here first.
    assert {"0", "2.6", "4.1", "5.3", "7.1", "7.4", "7.9", "11.1", "11.11", "13"} <= set(numbers)


def test_every_section_reference_resolves(texts: dict[Path, str]) -> None:
    sections = protocol_sections((DOCS / "protocol.md").read_text(encoding="utf-8"))
    problems = {
        p: found for p, text in texts.items() if (found := unresolved_sections(text, sections))
    }
    assert not problems, "§ references with no heading in docs/protocol.md:\n" + _report(problems)


def test_every_architecture_reference_resolves(texts: dict[Path, str]) -> None:
    titles = heading_titles((DOCS / "architecture.md").read_text(encoding="utf-8"))
    problems = {
        p: found for p, text in texts.items() if (found := unresolved_architecture(text, titles))
    }
    assert not problems, "architecture.md references with no such heading:\n" + _report(problems)


def test_paths_named_by_the_documents_exist() -> None:
    problems: dict[Path, list[tuple[int, str]]] = {}
    for doc in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        text = doc.read_text(encoding="utf-8")
        missing = [
            (text.count("\n", 0, m.start()) + 1, m.group(1))
            for m in _REPO_PATH.finditer(text)
            if m.group(1) not in _FOREIGN_PATHS and not (ROOT / m.group(1)).exists()
        ]
        if missing:
            problems[doc] = missing
    assert not problems, "documents name paths that do not exist:\n" + _report(problems)


def test_nothing_refers_outside_the_repository(texts: dict[Path, str]) -> None:
    problems = {p: found for p, text in texts.items() if (found := outside_references(text))}
    assert not problems, "references to paths outside the repository:\n" + _report(problems)


# -- the checks themselves can fail ------------------------------------------------------------


def test_checker_reports_a_missing_section() -> None:
    text = "see §7.4 and §7.4\u20137.5 and §99.1, protocol.md section 42\n(§7.10)\n"
    assert unresolved_sections(text, {"7.4", "7.5"}) == [(1, "99.1"), (2, "7.10"), (1, "42")]


def test_checker_skips_rfc_sections_only() -> None:
    text = "RFC 6347 §4.2.1, RFC 6347 / RFC 5246 §6.2.3, then §4.2.1 alone\n"
    assert unresolved_sections(text, set()) == [(1, "4.2.1")]


def test_checker_reports_a_missing_architecture_title() -> None:
    titles = ["Metrics (one module)", "Network safety in tests (hard rule)"]
    text = '(architecture.md, Metrics) (architecture.md,\n# network safety) architecture.md, "Nope"'
    assert unresolved_architecture(text, titles) == [(2, "Nope")]


def test_checker_reports_outside_paths() -> None:
    text = f"ok\nPath('{OUTSIDE_MARKERS[0]}x')\nsee {OUTSIDE_MARKERS[1]}/y\n"
    assert [line for line, _ in outside_references(text)] == [2, 3]
