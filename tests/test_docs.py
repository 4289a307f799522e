"""The documentation is executable: every code block of ``docs/backprop.md`` runs, with its output checked.

- Each fenced ``python`` block of the page is a doctest (``>>>`` prompts and the expected output). The blocks
  form one session, run top to bottom in a shared namespace, exactly as a reader pasting them into a Python
  prompt would. Each block is a test case of its own, named by its line in the page, and a failure prints the
  doctest report with the file and line of the example that differs.
- Every other fence must be a ``text`` block (formulas and diagrams), so that no code escapes the check.
- Every figure the page shows exists, is a PNG and stays small; every PNG in ``docs/figures`` is shown.
- Every link to a section of the page (``#anchor``) resolves to a heading.
- The public kernels' docstrings point to the section of the page that derives them.
- ``scripts/make_figures.py`` runs and is deterministic.
- Every relative link in ``README.md`` and ``docs/*.md`` resolves to an existing file (and a ``#anchor`` into a
  Markdown page to one of its headings), and the README stays a front page of at most 200 lines.
"""

import doctest
import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest

import fastconv.functional as F

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "backprop.md"
FIGURES = ROOT / "docs" / "figures"
SCRIPT = ROOT / "scripts" / "make_figures.py"
MAX_FIGURE_BYTES = 150_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The section of docs/backprop.md that derives each public kernel (see test_docstring_points_to_its_section).
SECTION_OF = {
    "conv2d_backward_weight": 1,
    "conv2d_backward_input": 2,
    "conv2d_backward": 1,
    "max_pool2d": 3,
    "max_pool2d_backward": 3,
    "conv_transpose2d": 6,
    "conv_transpose2d_backward_input": 6,
    "conv_transpose2d_backward_weight": 6,
    "conv_transpose2d_backward": 6,
}

OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE


def fenced_blocks(text):
    """Return ``[(language, first_line, source)]`` for every fenced code block of a Markdown text.

    ``first_line`` is the 1-based line number of the block's first line of content.
    """
    blocks = []
    language = None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```\s*([\w+-]*)\s*$", line)
        if language is None:
            if fence:
                language, first, lines = fence.group(1), number + 1, []
        elif fence and not fence.group(1):
            blocks.append((language, first, "\n".join(lines) + "\n"))
            language = None
        else:
            lines.append(line)
    assert language is None, f"{PAGE.name}: the code fence opened before line {first} is never closed"
    return blocks


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def headings(text):
    """``{anchor: heading text}`` for every ``#`` heading outside code blocks."""
    found = {}
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"^#{1,6}\s+(.*)$", line)):
            found[github_anchor(match.group(1))] = match.group(1)
    return found


TEXT = PAGE.read_text(encoding="utf-8")
BLOCKS = fenced_blocks(TEXT)
PYTHON_BLOCKS = [(first, source) for language, first, source in BLOCKS if language == "python"]
SECTIONS = {int(m.group(1)) for m in re.finditer(r"^## (\d+)\. ", TEXT, flags=re.MULTILINE)}


class PageSession:
    """Runs the page's python blocks in order in one namespace, each block at most once."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.globs = {"__name__": "backprop_md"}
        self.reports = []

    def run_through(self, k):
        """Run every block up to and including block ``k``; return ``(failures, report)`` of block ``k``."""
        parser = doctest.DocTestParser()
        while len(self.reports) <= k:
            first, source = self.blocks[len(self.reports)]
            # lineno is 0-based: doctest reports "line lineno + example.lineno + 1", the page's line.
            test = parser.get_doctest(source, self.globs, f"{PAGE.name}:{first}", str(PAGE), first - 1)
            runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS, verbose=False)
            out = io.StringIO()
            runner.run(test, out=out.write, clear_globs=False)
            self.globs = test.globs  # DocTest runs in a copy of the namespace it is given
            self.reports.append((runner.failures, out.getvalue()))
        return self.reports[k]


@pytest.fixture(scope="module")
def page_session():
    """One session for the whole page, with NumPy's print options reset before it and restored after."""
    saved = np.get_printoptions()
    np.set_printoptions(
        precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
        nanstr="nan", infstr="inf", sign="-", formatter=None, floatmode="maxprec", legacy=False,
    )
    try:
        yield PageSession(PYTHON_BLOCKS)
    finally:
        np.set_printoptions(**saved)


@pytest.mark.parametrize("k", range(len(PYTHON_BLOCKS)), ids=[f"line{first}" for first, _ in PYTHON_BLOCKS])
def test_code_block_output(page_session, k):
    first, _ = PYTHON_BLOCKS[k]
    failures, report = page_session.run_through(k)
    if failures:
        pytest.fail(
            f"docs/backprop.md, code block starting at line {first}: {failures} example(s) differ\n{report}",
            pytrace=False,
        )


def test_page_has_code_in_every_section():
    assert SECTIONS == {1, 2, 3, 4, 5, 6}, f"expected sections 1-6 numbered '## N. Title'; found {sorted(SECTIONS)}"
    section_starts = sorted(
        (TEXT[: m.start()].count("\n") + 1, int(m.group(1)))
        for m in re.finditer(r"^## (\d+)\. ", TEXT, flags=re.MULTILINE)
    )
    with_code = {max((s for line, s in section_starts if line < first), default=0) for first, _ in PYTHON_BLOCKS}
    assert SECTIONS <= with_code, f"sections without a checked code block: {sorted(SECTIONS - with_code)}"


@pytest.mark.parametrize("language, first, source", BLOCKS, ids=[f"line{b[1]}" for b in BLOCKS])
def test_every_block_is_checked(language, first, source):
    """Code goes in doctest-style python blocks with at least one example; anything else is a text block."""
    assert language in ("python", "text"), (
        f"docs/backprop.md line {first}: fence language {language!r}; use 'python' (doctest, checked) or 'text'"
    )
    if language == "python":
        examples = doctest.DocTestParser().get_examples(source)
        assert examples, f"docs/backprop.md line {first}: a python block without '>>>' examples is never run"


def test_doctest_reports_the_page_line():
    """A wrong expected output is reported with the file and line it sits on (the failure message relies on it)."""
    first, source = PYTHON_BLOCKS[0]
    wrong = source.rstrip("\n") + "\n>>> 1 + 1\n3\n"
    test = doctest.DocTestParser().get_doctest(wrong, {}, "probe", str(PAGE), first - 1)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    out = io.StringIO()
    runner.run(test, out=out.write)
    expected_line = first + wrong.splitlines().index(">>> 1 + 1")
    assert runner.failures == 1
    assert f'File "{PAGE}", line {expected_line}' in out.getvalue()


FIGURE_REFS = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", TEXT)


def test_page_shows_the_three_figures():
    assert len(FIGURE_REFS) >= 3, f"expected at least three figures; found {FIGURE_REFS}"


@pytest.mark.parametrize("ref", FIGURE_REFS)
def test_figure_exists_and_is_small(ref):
    path = (PAGE.parent / ref).resolve()
    assert path.is_file(), f"docs/backprop.md shows {ref}, which does not exist (run scripts/make_figures.py)"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{ref} is not a PNG"
    assert len(data) < MAX_FIGURE_BYTES, f"{ref} is {len(data)} bytes; keep figures under {MAX_FIGURE_BYTES}"


def test_every_figure_is_shown():
    shown = {(PAGE.parent / ref).resolve() for ref in FIGURE_REFS}
    unused = sorted(p.name for p in FIGURES.glob("*.png") if p.resolve() not in shown)
    assert not unused, f"figures in docs/figures that docs/backprop.md does not show: {unused}"


INTERNAL_LINKS = re.findall(r"\]\(#([^)]+)\)", TEXT)


@pytest.mark.parametrize("anchor", INTERNAL_LINKS)
def test_section_link_resolves(anchor):
    assert anchor in headings(TEXT), f"#{anchor} matches no heading; headings: {sorted(headings(TEXT))}"


@pytest.mark.parametrize("name, section", SECTION_OF.items())
def test_docstring_points_to_its_section(name, section):
    """Each public kernel's docstring says where its derivation is: "See docs/backprop.md, section N"."""
    doc = getattr(F, name).__doc__ or ""
    assert "docs/backprop.md" in doc, f"fastconv.functional.{name}'s docstring does not mention docs/backprop.md"
    cited = [
        {int(n) for n in re.findall(r"\d+", m.group(1))}
        for m in re.finditer(r"docs/backprop\.md`*,?\s+sections?\s+(\d+(?:\s*(?:,|and)\s*\d+)*)", doc)
    ]
    assert cited, f"fastconv.functional.{name}'s docstring cites docs/backprop.md without a section number"
    numbers = set().union(*cited)
    assert numbers <= SECTIONS, f"{name} cites section(s) {sorted(numbers - SECTIONS)}, which the page lacks"
    assert section in numbers, f"{name} should cite section {section} of docs/backprop.md; cites {sorted(numbers)}"


def test_make_figures_runs_and_is_deterministic(tmp_path):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first = module.make_figures(tmp_path / "a")
    second = module.make_figures(tmp_path / "b")
    names = sorted(p.name for p in first)
    assert names == sorted(Path(ref).name for ref in FIGURE_REFS), "the script and the page disagree on the figures"
    for a, b in zip(sorted(first), sorted(second)):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two runs"
        assert a.stat().st_size < MAX_FIGURE_BYTES, f"{a.name} is {a.stat().st_size} bytes"


# --- README and docs/*.md: every relative link resolves; the README stays a front page --------------------------

README = ROOT / "README.md"
MAX_README_LINES = 200
MARKDOWN_PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text):
    """``text`` with fenced code blocks and inline code spans blanked out (links there are not links)."""
    kept, in_code = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            kept.append("")
        else:
            kept.append("" if in_code else re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def relative_links(page):
    """``[(line, target)]`` for every link of a Markdown page that is not an absolute URL."""
    found = []
    for number, line in enumerate(prose(page.read_text(encoding="utf-8")).splitlines(), start=1):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):  # http:, https:, mailto:, ...
                found.append((number, target))
    return found


LINKS = [(page, line, target) for page in MARKDOWN_PAGES for line, target in relative_links(page)]


def test_pages_have_links():
    assert any(page == README for page, _, _ in LINKS), "README.md links to no docs page"
    assert (ROOT / "docs" / "index.md") in MARKDOWN_PAGES, "docs/index.md (the list of pages) is missing"


@pytest.mark.parametrize(
    "page, line, target", LINKS, ids=[f"{p.relative_to(ROOT)}:{n}:{t}" for p, n, t in LINKS]
)
def test_relative_link_resolves(page, line, target):
    where = f"{page.relative_to(ROOT)} line {line}: link ({target})"
    path_part, _, anchor = target.partition("#")
    path = (page.parent / path_part).resolve() if path_part else page
    assert path.exists(), f"{where} points to {path_part}, which does not exist"
    if anchor and path.suffix == ".md":
        assert path.is_file(), f"{where}: {path_part} is not a file"
        anchors = headings(path.read_text(encoding="utf-8"))
        assert anchor in anchors, (
            f"{where}: #{anchor} matches no heading of {path.relative_to(ROOT)}; its anchors: {sorted(anchors)}"
        )


def test_readme_is_a_front_page():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines; keep it a front page of at most {MAX_README_LINES} and move detail to docs/"
    )
