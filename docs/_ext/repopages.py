"""Sphinx extension: the repository's Markdown pages outside ``docs/`` become pages of the built documentation.

The guide pages link to ``../README.md``, ``../BENCHMARKS.md`` and ``../benchmarks/NOTES.md`` so that the links
work where the repository is read as files. Sphinx only builds what is inside ``docs/``, so at ``builder-inited``
this writes ``docs/repo/<path>`` for each of :data:`PAGES`: a MyST ``include`` of the real file, with the file's
links into ``docs/`` made relative to the copy. At ``source-read`` a page's links ``](../<path>`` are pointed at
the copy. The Markdown files themselves are not changed.
"""

import os
import re
from pathlib import Path

#: Repository files (relative to the repository root) published under ``docs/repo/``.
PAGES = ("README.md", "BENCHMARKS.md", "benchmarks/NOTES.md")
OUT = "repo"


def stub(srcdir, page):
    """The text of ``docs/repo/<page>``: the real file, included."""
    target = Path(srcdir) / OUT / page
    real = Path(srcdir).parent / page
    rel = Path(os.path.relpath(real, target.parent)).as_posix()
    return (
        f"```{{include}} {rel}\n"
        ":relative-docs: docs/\n"
        ":relative-images:\n"
        "```\n"
    )


def _on_builder_inited(app):
    for page in PAGES:
        path = Path(app.srcdir) / OUT / page
        path.parent.mkdir(parents=True, exist_ok=True)
        text = stub(app.srcdir, page)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


def _link_pattern(depth):
    """``](`` followed by ``depth`` ``../`` and one of the pages, as a regex with the page as group 1."""
    names = "|".join(re.escape(p) for p in PAGES)
    return re.compile(r"\]\(" + re.escape("../" * depth) + "(" + names + r")(?=[#)])")


def _on_source_read(app, docname, source):
    if docname.startswith(OUT + "/"):
        return
    depth = docname.count("/") + 1  # a page in docs/ reaches the repository root with one ../
    prefix = "../" * (depth - 1)
    source[0] = _link_pattern(depth).sub(lambda m: f"]({prefix}{OUT}/{m.group(1)}", source[0])


def setup(app):
    app.connect("builder-inited", _on_builder_inited)
    app.connect("source-read", _on_source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
