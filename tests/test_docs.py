"""The README and docs/ stay short, current and linked: issue 50's checks on the documentation."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INDEX = DOCS / "index.md"
README_MAX_WORDS = 1500
PAGE_MAX_WORDS = 3000
GENERATED_MARK = "<!-- generated"
# where code comments and docstrings are checked for citations of a docs section. plcli/bench is
# left out while it moves out of the package (issue 50); its files must cite pages only as well.
CODE_DIRS = ("plcli", "scripts", "tests")
CODE_SKIP = ("plcli/bench/",)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SPLICE = re.compile(r"<!--\s*[\w-]+\s*:\s*(start|end)\s*-->")
DATED = re.compile(r"\b\d{4}-\d{2}(-\d{2})?\b|\b(morning|afternoon|evening|night|over time)\b", re.I)
# a docs page (or the README) followed by a quoted, parenthesised or section-marked title, or an anchor
CITE = re.compile(r"(?:docs/[\w./-]+\.md|README(?:\.md)?)(?:#|(?:\s*[,:(]\s*|\s+)[\"“'‘§])")


def words(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").split())


def is_generated(path: Path) -> bool:
    first = path.read_text(encoding="utf-8").lstrip().splitlines()[:1]
    return (path.parent.name == "results") or bool(first and first[0].startswith(GENERATED_MARK))


def doc_pages() -> list[Path]:
    """Every page under docs/ except the notes folder."""
    return sorted(p for p in DOCS.rglob("*.md") if "notes" not in p.relative_to(DOCS).parts)


def hand_written() -> list[Path]:
    return [p for p in doc_pages() if not is_generated(p)]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def headings(text: str) -> list[str]:
    return [ln for ln in prose_lines(text) if re.match(r"#{1,6} ", ln)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def links(path: Path) -> list[str]:
    text = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    text = re.sub(r"`[^`]*`", "", text)  # inline code is not a link
    return LINK.findall(text)


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md":
            if anchor not in {slug(h) for h in headings(dest.read_text(encoding="utf-8"))}:
                bad.append(target)
    return bad


def commented_texts(path: Path):
    """(line, text) of every comment and docstring of a Python file."""
    src = path.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc


def section_citations(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: {m.group(0)}"
            for line, text in commented_texts(path) for m in CITE.finditer(text)]


def code_files() -> list[Path]:
    files = []
    for d in CODE_DIRS:
        for p in sorted((ROOT / d).rglob("*.py")):
            if not p.relative_to(ROOT).as_posix().startswith(CODE_SKIP):
                files.append(p)
    return files


# -- the checks work ------------------------------------------------------------------------------

def test_the_checks_catch_what_they_are_for(tmp_path):
    assert CITE.search('see docs/benchmark.md, "Learning curve"')
    assert CITE.search("(docs/ctc.md 'Speed')")
    assert CITE.search("docs/asr-prior.md#limits")
    assert not CITE.search("docs/recognisers.md's table")
    assert not CITE.search("(docs/benchmark.md) has the method")
    assert CITE.search("(see README, 'Labels')") and not CITE.search("documented in the README:")
    assert SPLICE.search("<!-- curve:start -->") and SPLICE.search("<!-- results:end -->")
    assert DATED.search("## Teacher levers (2026-12-03, afternoon)")
    assert DATED.search("## `make demo` over time") and not DATED.search("## Decisions and their evidence")
    want = "voice-notes-extracted-once-not-read-from-the-zip"
    assert slug("## Voice notes: extracted once, not read from the zip") == want
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](page.md#title) [gone](missing.md) [no anchor](#nowhere)\n"
        "```\n[in code](ignored.md)\n```\n[web](https://example.org)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.md", "#nowhere"]
    code = tmp_path / "mod.py"
    code.write_text(
        '"""Module (docs/benchmark.md,\n"Pretraining levers")."""\n# fine: docs/ctc.md\n'
        'x = 1  # (docs/ctc.md, "Speed")\n',
        encoding="utf-8",
    )
    assert len([m for _, t in commented_texts(code) for m in CITE.finditer(t)]) == 2


# -- the README -----------------------------------------------------------------------------------


def test_readme_is_at_most_1500_words():
    assert words(README) <= README_MAX_WORDS, f"README.md has {words(README)} words"


def test_readme_first_screen_sets_up_before_your_own_data():
    text = README.read_text(encoding="utf-8")
    low = text.lower()
    own = re.search(r"^#+ .*your own data", low, re.M)
    assert own, "README.md needs a 'Your own data' section"
    demo, test = low.find("make demo"), low.find("make test")
    assert 0 <= demo < test < own.start(), "`make demo` and `make test` come first, in this order"
    end = text.find("\n## ", own.end())
    section = text[own.end() : end if end >= 0 else len(text)]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the 'Your own data' section shows its commands"
    commands = [ln for ln in block.group(1).splitlines() if ln.strip().startswith("plcli ")]
    assert 1 <= len(commands) <= 5, commands
    assert commands[-1].split()[1] == "predict", "the commands end in predictions"


def test_readme_has_one_dated_results_table_linking_the_benchmark():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Results\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md needs a Results section"
    section = m.group(1)
    assert len(re.findall(r"^\|[-| ]+\|$", section, re.M)) == 1, "exactly one table"
    assert re.search(r"\b\d{4}-\d{2}-\d{2}\b", section), "the table says when it was measured"
    assert "docs/benchmark.md" in section
    assert len(re.findall(r"^\|[-| ]+\|$", text, re.M)) == 1, "the README holds no other table"


# -- docs/ ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", hand_written(), ids=lambda p: str(p.relative_to(DOCS)))
def test_doc_page_is_at_most_3000_words(page):
    assert words(page) <= PAGE_MAX_WORDS, f"{page.name} has {words(page)} words"


@pytest.mark.parametrize("page", [README, *hand_written()], ids=lambda p: p.name)
def test_no_splice_markers_in_hand_written_pages(page):
    found = SPLICE.findall(page.read_text(encoding="utf-8"))
    assert not found, f"{page.name}: generated tables go into files of their own (docs/results/)"


@pytest.mark.parametrize("page", [README, *hand_written()], ids=lambda p: p.name)
def test_no_dated_headings(page):
    dated = [h for h in headings(page.read_text(encoding="utf-8")) if DATED.search(h)]
    assert not dated, f"{page.name}: dated narratives belong in git history, not in headings: {dated}"


def test_generated_pages_say_so():
    for page in (DOCS / "results").glob("*.md"):
        first = page.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(GENERATED_MARK) and "make " in first, f"{page.name}: {first!r}"


@pytest.mark.parametrize("page", [README, *doc_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links {broken_links(page)}"


def test_index_lists_every_page_and_no_note():
    linked = {(INDEX.parent / t.partition("#")[0]).resolve() for t in links(INDEX)}
    missing = [str(p.relative_to(DOCS)) for p in doc_pages() if p != INDEX and p.resolve() not in linked]
    assert not missing, f"docs/index.md does not list {missing}"
    assert not any(
        "notes" in p.relative_to(DOCS.resolve()).parts for p in linked if p.is_relative_to(DOCS.resolve())
    ), "docs/notes/ stays out of the index"


def test_readme_links_the_index():
    assert "docs/index.md" in links(README)


# -- code -----------------------------------------------------------------------------------------


def test_no_code_comment_cites_a_doc_section():
    found = [c for p in code_files() for c in section_citations(p)]
    assert not found, "cite the page, not a section title (titles change):\n" + "\n".join(found)
