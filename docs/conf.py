"""Sphinx configuration of the fastconv documentation.

Build (from the repository root, after ``pip install -e '.[docs]'``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The guide pages are the Markdown files of this folder (read by myst-parser, so they stay readable on a code host);
the API reference (``docs/api/``) is written at build time from each module's ``__all__`` by ``_ext/apiref.py``.

Links to the NumPy, Python and PyTorch references (intersphinx) need their inventories from the network, which a
build machine may not reach; a build that cannot fetch them would warn and so fail under ``-W``. They are
therefore used only when ``FASTCONV_DOCS_INTERSPHINX=1`` is set; without it, names of those libraries are plain
text and the build needs no network at all.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's fastconv, whatever is installed
sys.path.insert(0, str(HERE / "_ext"))

import fastconv  # noqa: E402

project = "fastconv"
author = "the fastconv developers"
copyright = "the fastconv developers"  # noqa: A001 - Sphinx's name
release = fastconv.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
    "apiref",
    "repopages",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []

# --- Markdown (myst-parser) ----------------------------------------------------------------------------------------
# GitHub-style anchors for every heading, so the pages' "page.md#section" links resolve as they do on a code host.
myst_heading_anchors = 6
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]

# --- API reference -------------------------------------------------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc Parameters sections say the types
numpydoc_show_class_members = False  # autoclass :members: lists the methods once
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- Links to other projects' references (see the module docstring) ----------------------------------------------
intersphinx_mapping = {}
if os.environ.get("FASTCONV_DOCS_INTERSPHINX", "") not in ("", "0"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
    }

# --- HTML ----------------------------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"fastconv {release}"
html_static_path = []
html_theme_options = {"page_width": "1240px", "sidebar_width": "250px"}
toc_object_entries_show_parents = "hide"  # the sidebar lists "Conv2d.forward" as "forward()" under Conv2d
