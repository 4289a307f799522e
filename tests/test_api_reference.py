"""The API reference (``docs/``, built by Sphinx) documents every public name, and builds without a warning.

The documentation is built once, in process, with Sphinx's ``dummy`` builder (it reads, resolves every reference
and writes nothing; the HTML build of ``.ci/run`` reads the same sources). Then, for every public module of the
package (every module without a ``_`` name part, except the kernels and the compile flags) and every name of its
``__all__``:

- the name resolves to a documented Python object of the reference that *is* the same object (so a name left
  out, or documented under a name that imports something else, fails), and
- the module's page describes it there or links to where it is described.

Skipped when Sphinx, numpydoc or myst-parser is missing (``pip install -e '.[docs]'``).
"""

import importlib
import importlib.util
import io
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_spec = importlib.util.spec_from_file_location("fastconv_docs_apiref", DOCS / "_ext" / "apiref.py")
apiref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apiref)

# What the issue asks the reference to cover at least; modules added later are found by walking the package.
REQUIRED_MODULES = {
    "fastconv", "fastconv.functional", "fastconv.nn", "fastconv.optim", "fastconv.datasets", "fastconv.compat",
    "fastconv.compat.layers", "fastconv.compat.fast_layers", "fastconv.compat.layer_utils", "fastconv.models",
    "fastconv.training", "fastconv.metrics", "fastconv.serialization", "fastconv.plan", "fastconv.distributed",
    "fastconv.compile",
}
MODULES = apiref.public_modules()
# Sphinx extensions' own deprecation notices (myst-parser, numpydoc against this Sphinx) are not the docs' problem.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
NAMES = [(m, name) for m in MODULES for name, _ in apiref.exported(m)]  # ValueError: a public module lacks __all__


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(python domain objects, {docname: doctree}, warnings text)`` of one dummy build of docs/."""
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    from sphinx.application import Sphinx

    out = tmp_path_factory.mktemp("docs")
    warnings = io.StringIO()
    app = Sphinx(str(DOCS), str(DOCS), str(out / "dummy"), str(out / "doctrees"), "dummy",
                 status=io.StringIO(), warning=warnings, freshenv=True)
    app.build()
    objects = app.env.get_domain("py").objects
    pages = {f"api/{m}": app.env.get_doctree(f"api/{m}") for m in MODULES}
    return objects, pages, warnings.getvalue()


def resolve(dotted):
    """The object a dotted name imports (``fastconv.nn.Conv2d`` -> the class), or a sentinel when it does not."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attribute in parts[k:]:
            obj = getattr(obj, attribute, resolve)
        return obj
    return resolve


def referenced(doctree):
    """Every target the page cross-references (``pending_xref`` nodes: roles, table links)."""
    from sphinx import addnodes

    return {node["reftarget"] for node in doctree.findall(addnodes.pending_xref)}


def test_build_has_no_warnings(built):
    _, _, warnings = built
    assert not warnings.strip(), f"the docs build warns (the -W build of .ci/run would fail):\n{warnings}"


def test_reference_covers_the_required_modules():
    missing = REQUIRED_MODULES - set(MODULES)
    assert not missing, f"public modules the API reference does not document: {sorted(missing)}"


@pytest.mark.parametrize("module, name", NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_public_name_is_in_the_reference(built, module, name):
    objects, pages, _ = built
    obj = getattr(importlib.import_module(module), name)
    documented = [full for full in objects if resolve(full) is obj]
    assert documented, f"{module}.{name} (in {module}.__all__) is documented nowhere in the API reference"
    page = f"api/{module}"
    here = [full for full in documented if objects[full].docname == page]
    linked = referenced(pages[page]) & set(documented)
    assert here or linked, (
        f"{module}.{name} is documented as {documented}, but the page of {module} ({page}) neither describes "
        f"it nor links to it"
    )


def test_public_module_without_all_is_refused(monkeypatch):
    module = types.ModuleType("fastconv_docs_probe")
    module.f = lambda: None
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(ValueError, match=r"fastconv_docs_probe has no __all__"):
        apiref.exported(module.__name__)
