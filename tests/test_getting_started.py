"""Every code example of ``docs/getting-started.md`` runs, with its output checked.

The page's fenced ``python`` blocks are doctests (``>>>`` prompts and the expected output), run top to bottom in
one namespace as a reader pasting them into a Python prompt would. The page's two fresh-machine commands are the
README's, word for word.
"""

import doctest
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "getting-started.md"
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def blocks(text, language):
    """``[(first line, source)]`` of every fenced block of ``language``."""
    return [(text[: m.start(2)].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def test_page_examples_run():
    text = PAGE.read_text(encoding="utf-8")
    found = blocks(text, "python")
    assert len(found) >= 3, f"{PAGE.name}: expected the functional, layer and checkpoint examples; found {len(found)}"
    parser, globs, failures = doctest.DocTestParser(), {"__name__": "getting_started_md"}, []
    for first, source in found:
        test = parser.get_doctest(source, globs, f"{PAGE.name}:{first}", str(PAGE), first - 1)
        assert test.examples, f"{PAGE.name} line {first}: a python block without '>>>' examples is never run"
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        out = io.StringIO()
        runner.run(test, out=out.write, clear_globs=False)
        globs = test.globs
        if runner.failures:
            failures.append(out.getvalue())
    assert not failures, f"docs/getting-started.md: examples differ\n" + "\n".join(failures)


def test_two_commands_are_the_readmes():
    page = {line for _, source in blocks(PAGE.read_text(encoding="utf-8"), "bash") for line in source.splitlines()}
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("## Fresh machine"):]
    section = section[: section.index("\n## ", 1)]
    commands = [line for _, source in blocks(section, "bash") for line in source.splitlines() if line.strip()]
    assert len(commands) == 2, f"README's fresh-machine section should hold two commands; found {commands}"
    missing = [c for c in commands if c not in page]
    assert not missing, f"docs/getting-started.md lacks the README's command(s) {missing}"
