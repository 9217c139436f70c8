"""Every citation of the project's documents points at something that is there: a section of
docs/design.md (``docs/design.md §4``), a heading of ARCHITECTURE.md or of the README
(``ARCHITECTURE.md, "Resume"``, ``README, "Development"``), and no citation names a document
the repository does not hold (the design record once lived outside it, as ``DESIGN.md``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("gateway", "publisher", "devtools", "bench", "tests", "deploy", "docs", "scripts")


#: files of other projects that the code cites (msgspec's documentation)
ELSEWHERE = {"docs/schema-evolution.rst", "docs/perf-tips.rst", "docs/structs.rst"}
TEXT = (".py", ".md", ".sh", ".toml", ".yml", ".yaml", ".conf", ".cfg", ".in")


def _texts() -> list[tuple[Path, str]]:
    paths = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "deploy" / "Dockerfile"]
    paths += [p for p in (ROOT / "scripts").iterdir() if p.is_file()]
    for tree in SOURCES:
        paths += [p for p in (ROOT / tree).rglob("*") if p.suffix in TEXT]
    return [(p.relative_to(ROOT), p.read_text()) for p in paths if p.is_file()]


def _headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text().splitlines()
            if line.startswith("#")]  # fmt: skip


def test_every_citation_names_a_section_that_exists() -> None:
    design = {m.group(1) for m in re.finditer(r"^## (\d+)\. ", (ROOT / "docs/design.md")
              .read_text(), re.M)}  # fmt: skip
    documents = {"ARCHITECTURE.md": _headings(ROOT / "ARCHITECTURE.md"),
                 "README": _headings(ROOT / "README.md")}  # fmt: skip
    broken = []
    for path, text in _texts():
        for match in re.finditer(r"docs/design\.md §(\d+)", text):
            if match.group(1) not in design:
                broken.append(f"{path}: {match.group(0)}")
        for match in re.finditer(r'\b(ARCHITECTURE\.md|README)[,:]? "([^"]+)"', text):
            document, title = match.groups()
            # a title wrapped over comment lines: "Watermark\n    #: and epoch"
            title = " ".join(word for word in title.split() if word not in ("#", "#:"))
            if not any(heading.startswith(title) for heading in documents[document]):
                broken.append(f"{path}: {match.group(0)}")
        for match in re.finditer(
            r"\b((?:gateway|publisher|devtools|tests|bench|deploy|docs|scripts)/[\w/.-]*\w)", text
        ):
            cited = match.group(1).rstrip(".")
            if "." not in cited.rpartition("/")[2] or cited in ELSEWHERE:
                continue  # a directory in prose, or another project's file
            generated = cited.startswith(("bench/results/", "bench/build/"))
            if not generated and not (ROOT / cited).exists() and "*" not in cited:
                broken.append(f"{path}: {cited} (no such file)")
        if path == Path(__file__).relative_to(ROOT):
            continue  # this file names the old record on purpose
        for match in re.finditer(r"(?<![/\w])DESIGN(\.md)?\b", text):
            broken.append(f"{path}: {match.group(0)} (the design record is docs/design.md)")
    assert not broken, "\n".join(broken)
