"""Sphinx configuration of fastxent's documentation site.

Build (from the repository root, after ``pip install ".[docs]"``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The benchmark tables and the plot of the performance page are generated at build time from
``benchmarks/results/results.json`` by ``benchmarks/report.py`` (into ``docs/_generated``), so
they are those of the measured run.
"""

import pathlib
import sys

import fastxent

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402  (benchmarks/report.py: tables and plot from results.json)

report.write_docs(ROOT / "benchmarks" / "results" / "results.json", ROOT / "docs" / "_generated")

# The API reference: one autosummary table per public module, listing its ``__all__`` as it is
# at build time (so a name added to ``__all__`` gets its page without an edit here).
API_MODULES = {
    "fastxent": "NumPy arrays in, NumPy arrays out. Installed with fastxent itself.",
    "fastxent.torch": "Autograd-aware drop-ins for PyTorch (``pip install \"fastxent[torch]\"``).",
    "fastxent.dask": "Lazy versions for ``dask.array`` (``pip install \"fastxent[dask]\"``).",
}


def _write_api_pages(directory: pathlib.Path) -> None:
    import importlib

    directory.mkdir(exist_ok=True)
    for name, blurb in API_MODULES.items():
        module = importlib.import_module(name)
        lines = [f"``{name}``", "=" * (len(name) + 4), "", f".. automodule:: {name}",
                 "   :no-members:", "", blurb, "", f".. currentmodule:: {name}", "",
                 ".. autosummary::", "   :toctree: generated", ""]
        lines += [f"   {public}" for public in sorted(module.__all__, key=str.lower)]
        text = "\n".join(lines) + "\n"
        page = directory / f"{name}.rst"
        if not page.exists() or page.read_text() != text:  # unchanged: no rebuild of the page
            page.write_text(text)


_write_api_pages(ROOT / "docs" / "api")

project = "fastxent"
author = "the fastxent developers"
copyright = "the fastxent developers"
version = release = fastxent.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated/*.md"]
templates_path = ["_templates"]

# MyST: ``(label)=`` targets and ``{ref}`` roles; the Notes of the numerics page are cited by
# name from the code, so their targets are explicit labels, never derived from the headings.
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "none"  # the signature shows the names and defaults; types live in Parameters
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False  # the class template lists the methods itself
numpydoc_validation_checks = {"PR01", "PR02", "RT01"}  # every parameter documented, Returns present
numpydoc_xref_param_type = False
numpydoc_use_plots = False

html_theme = "pydata_sphinx_theme"
html_title = f"fastxent {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 5,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# The guide's pages are one level deep: no left sidebar (it would be empty); the API
# reference keeps it.
html_sidebars = {page: [] for page in (
    "index", "getting-started", "coming-from", "semantics", "numerics", "bridges",
    "large-vocabularies", "performance", "reliability", "changelog")}
html_static_path: list[str] = []
# The colour mode a first visit starts in (the theme logs an error when it is unset).
html_context = {"default_mode": "auto"}
html_show_sourcelink = False
