"""The repository stands alone: code and docs cite its own docs/ pages by section ("docs/model.md §3"), every
cited section exists, and nothing cites a document outside the repository."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/([\w-]+\.md) §(\d+)((?:, §\d+)*)")
OUTSIDE = re.compile(r"\bSPEC\b|STACK_NOTES")


def _texts() -> dict[str, str]:
    paths = [*ROOT.glob("*.py"), *ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")]
    for folder in ("customnet_jax", "configs", "tests", "benchmarks"):
        paths += (ROOT / folder).rglob("*.py")
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(paths) if p.name != "test_docs.py"}


def _sections(page: pathlib.Path) -> set[str]:
    return set(re.findall(r"^## (\d+)\. ", page.read_text(), re.MULTILINE))


def test_cited_sections_exist():
    cited, missing = 0, []
    for name, text in _texts().items():
        for match in CITATION.finditer(text):
            page = ROOT / "docs" / match.group(1)
            numbers = [match.group(2), *re.findall(r"\d+", match.group(3))]
            sections = _sections(page) if page.is_file() else set()
            cited += len(numbers)
            missing += [f"{name}: docs/{match.group(1)} §{n}" for n in numbers if n not in sections]
    assert cited > 10  # the code does cite the docs (the pattern matches what it writes)
    assert not missing, "citations of sections that do not exist:\n" + "\n".join(missing)


def test_nothing_cites_documents_outside_the_repository():
    found = [f"{name}:{i + 1}: {line.strip()}" for name, text in _texts().items()
             for i, line in enumerate(text.splitlines()) if OUTSIDE.search(line)]
    assert not found, "cite docs/model.md or docs/stack.md instead:\n" + "\n".join(found)


def test_numbered_pages_number_their_sections_in_order():
    for page in ("model.md", "stack.md", "demo_model.md"):
        numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", (ROOT / "docs" / page).read_text(), re.MULTILINE)]
        assert numbers == list(range(1, len(numbers) + 1)), page
