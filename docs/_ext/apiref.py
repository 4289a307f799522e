"""Sphinx extension: write the API reference pages from the package's ``__all__`` lists.

At ``builder-inited`` it walks the ``fastconv`` package and writes ``docs/api/<module>.rst`` for every public
module (no name part starting with ``_``, not in :data:`INTERNAL`), plus ``docs/api/index.rst`` listing them.
Each page documents every name of the module's ``__all__``, in that order:

- a class, exception or function defined in that module (its ``__module__``) gets its autodoc entry;
- one re-exported from another documented module gets a cross-reference to its entry there (so nothing is
  described twice); a submodule gets a link to its page;
- anything else (constants, instances such as ``TUNING``) gets an ``autodata`` entry.

A name added to ``__all__`` therefore appears in the reference with no edit to the docs; a public module
without ``__all__`` is an error (the reference would not know what is public). ``tests/test_api_reference.py``
builds the pages and checks that every name resolves.
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

PACKAGE = "fastconv"
#: Modules that are implementation, not API: the compiled kernels (reached through the plan layer) and the
#: compile flags. Private modules (a name part starting with ``_``) are skipped as well.
INTERNAL = ("fastconv.kernels", "fastconv.config")
#: Pages first in the reference's table of contents; the other public modules follow alphabetically.
ORDER = (
    "fastconv", "fastconv.functional", "fastconv.nn", "fastconv.optim", "fastconv.datasets", "fastconv.transforms",
    "fastconv.training", "fastconv.models", "fastconv.metrics", "fastconv.serialization",
    "fastconv.compat", "fastconv.compat.layers", "fastconv.compat.fast_layers", "fastconv.compat.layer_utils",
    "fastconv.distributed", "fastconv.compile", "fastconv.plan", "fastconv.reference",
)
MAX_VALUE_REPR = 60


def is_internal(name):
    parts = name.split(".")
    return any(p.startswith("_") for p in parts) or any(name == m or name.startswith(m + ".") for m in INTERNAL)


def public_modules():
    """Names of the package's public modules: the reference order first, then the rest alphabetically."""
    root = importlib.import_module(PACKAGE)
    found = {PACKAGE} | {
        m.name for m in pkgutil.walk_packages(root.__path__, PACKAGE + ".") if not is_internal(m.name)
    }
    return [m for m in ORDER if m in found] + sorted(found - set(ORDER))


def exported(module_name):
    """``[(name, object)]`` of a module's ``__all__``; ValueError when the module has none."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ValueError(f"public module {module_name} has no __all__: the API reference cannot tell its public names")
    return [(name, getattr(module, name)) for name in names]


def home(module_name, name, obj, exports):
    """The module whose page describes ``obj`` (exported as ``name`` by ``module_name``).

    Its defining module (``__module__``) when that module exports it under the same name; otherwise the most
    specific (longest-named) module exporting that very object under that name. ``exports`` maps every
    documented module to its ``{name: object}``.
    """
    holders = [m for m, names in exports.items() if name in names and names[name] is obj]
    owner = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
    if owner in holders:
        return owner
    return max(holders, key=len) if holders else module_name


ROLE = re.compile(r":(func|class|meth|attr|data|exc|obj|mod):`([A-Za-z_][\w.]*)`")


def first_line(obj, where=None):
    """The first line of an object's docstring (the summary of the table), or empty.

    With ``where`` (the module the object is described in, when the table is another module's), a role naming
    one of that module's attributes (``:func:`conv2d```) is written with its full name so that it still links.
    """
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    if where is None:
        return line
    home_module = importlib.import_module(where)

    def qualify(m):
        role, target = m.groups()
        if hasattr(home_module, target.split(".")[0]):
            return f":{role}:`~{where}.{target}`"
        return m.group(0)

    return ROLE.sub(qualify, line)


def summary_row(module_name, name, obj, exports):
    """One row of a page's table: a link to the name's entry and the first line of its docstring."""
    if inspect.ismodule(obj):
        link, where = f":mod:`{name} <{obj.__name__}>`", obj.__name__
    else:
        where = home(module_name, name, obj, exports)
        link = f":py:obj:`{name} <{where}.{name}>`"
        if where != module_name:
            link += f" (from :mod:`{where}`)"
    return f"   * - {link}\n     - {first_line(obj, where if where != module_name else None)}"


def entry(module_name, name, obj, exports):
    """The autodoc entry for a name described on ``module_name``'s page, or None (described elsewhere)."""
    if inspect.ismodule(obj) or home(module_name, name, obj, exports) != module_name:
        return None
    full = f"{module_name}.{name}"
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return f".. autoexception:: {full}\n   :show-inheritance:\n"
    if inspect.isclass(obj):
        return f".. autoclass:: {full}\n   :members:\n   :show-inheritance:\n"
    if callable(obj):
        return f".. autofunction:: {full}\n"
    options = "   :no-value:\n" if len(repr(obj)) > MAX_VALUE_REPR else ""
    return f".. autodata:: {full}\n{options}"


def module_page(module_name, exports):
    """The reST of one module's page: its docstring, a table of its ``__all__``, and the entries."""
    title = f"``{module_name}``"
    items = list(exports[module_name].items())
    rows = "\n".join(summary_row(module_name, name, obj, exports) for name, obj in items)
    parts = [
        ".. This page is generated by docs/_ext/apiref.py from the module's __all__; do not edit it.\n",
        f"{title}\n{'=' * len(title)}\n",
        f".. automodule:: {module_name}\n   :no-members:\n",
        f".. currentmodule:: {module_name}\n",
    ]
    if rows:
        parts.append(f".. rubric:: Public names\n\n.. list-table::\n   :widths: 35 65\n\n{rows}\n")
    parts.extend(e for e in (entry(module_name, name, obj, exports) for name, obj in items) if e)
    return "\n".join(parts)


def index_page(modules):
    toc = "\n".join(f"   {m}" for m in modules)
    return (
        ".. This page is generated by docs/_ext/apiref.py; do not edit it.\n\n"
        "API reference\n=============\n\n"
        "Every public name of every public module, from the docstrings: each module's page documents the\n"
        "names of its ``__all__`` in order (a name re-exported from another module links to its entry there).\n"
        "The top-level package ``fastconv`` re-exports the functional API.\n\n"
        f".. toctree::\n   :maxdepth: 1\n\n{toc}\n"
    )


def write_if_changed(path, text):
    """Write ``text`` to ``path`` unless it already holds it (so Sphinx does not re-read unchanged pages)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def write_pages(out_dir):
    """Write the reference into ``out_dir`` (created); remove pages of modules that no longer exist."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = public_modules()
    exports = {m: dict(exported(m)) for m in modules}
    wanted = {f"{m}.rst": module_page(m, exports) for m in modules}
    wanted["index.rst"] = index_page(modules)
    for stale in out_dir.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    for filename, text in wanted.items():
        write_if_changed(out_dir / filename, text)
    return modules


def _on_builder_inited(app):
    write_pages(Path(app.srcdir) / "api")


def setup(app):
    app.connect("builder-inited", _on_builder_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
