"""The documentation is true and complete: every example prints what it shows, on both
backends, and every public name has a numpydoc docstring with Parameters, Returns and Examples.

The examples are those of the public docstrings (``fastxent``, ``fastxent.torch``,
``fastxent.dask``), of the README's tour and of the site's pages (``docs/*.md``). The public
names are read from each module's ``__all__`` when the tests run, so a name added later is
covered without an edit here.
"""

import doctest
import importlib
import importlib.util
import inspect
import pathlib
import re

import numpy as np
import pytest

import fastxent

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FLAGS = doctest.NORMALIZE_WHITESPACE
PUBLIC_MODULES = ("fastxent", "fastxent.torch", "fastxent.dask")
# Where the public names are defined: the modules whose docstrings hold the examples.
DOCSTRING_MODULES = ("fastxent._api", "fastxent._linear", "fastxent.torch", "fastxent.dask")
REQUIRED_SECTIONS = ("Parameters", "Returns", "Examples")
# The pages' examples that import one of these are skipped, with a reason, where it is missing.
OPTIONAL_MODULES = ("torch", "dask", "sklearn", "scipy")


def _failures(test):
    """The report of every example of ``test`` whose output differs from the one shown."""
    messages = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with np.printoptions(legacy=False):
        runner.run(test, out=messages.append, clear_globs=False)
    assert runner.tries > 0
    return messages


def _module_or_reason(name):
    try:
        return importlib.import_module(name), None
    except ImportError as exc:  # fastxent.torch without PyTorch, fastxent.dask without Dask
        return None, f"{name} is not importable here: {exc}"


def _docstring_tests():
    """One param per public docstring with examples; a skipping param per module that cannot
    be imported (so that the missing module shows in the report)."""
    params = []
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in DOCSTRING_MODULES:
        module, reason = _module_or_reason(name)
        if module is None:
            params.append(pytest.param(None, id=name, marks=pytest.mark.skip(reason=reason)))
            continue
        for test in finder.find(module, globs={}):
            short = test.name.split(".")[-1]
            if test.examples and not (short.startswith("_") and short != "__call__"):
                params.append(pytest.param(test, id=test.name))
    return params


@pytest.mark.parametrize("test", _docstring_tests())
def test_docstring_examples_print_what_they_show(backend, test):
    failures = _failures(test)
    assert not failures, "\n".join(failures)


def _markdown_doctest(path):
    blocks = re.findall(r"```(?:python|pycon)\n(.*?)```", path.read_text(), flags=re.S)
    text = "\n".join(block for block in blocks if ">>>" in block)
    return doctest.DocTestParser().get_doctest(text, {}, path.name, str(path), 0) if text else None


def test_readme_tour_prints_what_it_shows(backend):
    if not README.exists():
        pytest.skip("README.md is not next to the tests")
    test = _markdown_doctest(README)
    assert test is not None, "the README has no >>> examples"
    failures = _failures(test)
    assert not failures, "\n".join(failures)


def _pages():
    if not DOCS.is_dir():  # the wheel's test run: the tests without the tree
        return [pytest.param(None, marks=pytest.mark.skip(reason="docs/ is not next to the tests"))]
    return [page for page in sorted(DOCS.glob("*.md")) if ">>>" in page.read_text()]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name if p else "docs")
def test_docs_page_examples_print_what_they_show(backend, page):
    test = _markdown_doctest(page)
    for example in test.examples:  # the pages' examples that need an optional module
        for needed in OPTIONAL_MODULES:
            if re.match(rf"\s*(import|from) {needed}\b|.*\bfastxent\.{needed}\b",
                        example.source):
                pytest.importorskip(needed)
    failures = _failures(test)
    assert not failures, "\n".join(failures)


def test_readme_tables_are_the_measured_runs():
    """The README's tables are generated from benchmarks/results/ (report.py)."""
    script, results = ROOT / "benchmarks" / "report.py", ROOT / "benchmarks" / "results"
    if not (script.exists() and (results / "results.json").exists() and README.exists()):
        pytest.skip("benchmarks/ or README.md is not next to the tests")
    spec = importlib.util.spec_from_file_location("report", script)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    text = README.read_text()
    main = results / "results.json"
    assert report.readme_with_table(text, report.load(main), report._avx2(main)) == text, (
        "README.md's generated tables are not those of benchmarks/results/: run "
        "python benchmarks/report.py")


# ------------------------------------------------------------------------------------------
# Every public name is documented
# ------------------------------------------------------------------------------------------

def _sections(doc):
    """numpydoc sections of a docstring: {title: body}, a title being a line underlined by
    dashes of its length."""
    lines = inspect.cleandoc(doc or "").splitlines()
    sections, current = {}, None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and line.strip() and set(lines[i + 1].strip()) == {"-"} \
                and len(lines[i + 1].strip()) == len(line.strip()):
            current = line.strip()
            sections[current] = []
        elif current is not None and not set(line.strip()) == {"-"}:
            sections[current].append(line)
    return {title: "\n".join(body).strip() for title, body in sections.items()}


def _documented_parameters(body):
    names = set()
    for line in body.splitlines():
        if line and not line[0].isspace():
            names.update(n.strip().lstrip("*") for n in line.split(" : ")[0].split(","))
    return names


def _public_objects():
    """(qualified name, object, what) for every function, class and public method reachable
    from the public modules' ``__all__``; data (``fastxent.backend``) is left out."""
    found = []
    for name in PUBLIC_MODULES:
        module, reason = _module_or_reason(name)
        if module is None:
            found.append(pytest.param(None, None, None, id=name,
                                      marks=pytest.mark.skip(reason=reason)))
            continue
        for public in module.__all__:
            obj = getattr(module, public)
            qualified = f"{name}.{public}"
            if inspect.isclass(obj):
                found.append(pytest.param(qualified, obj, "class", id=qualified))
                own = {k for k, v in vars(obj).items() if callable(v)
                       and (not k.startswith("_") or k == "__call__")}
                for method in sorted(own):
                    found.append(pytest.param(f"{qualified}.{method}", getattr(obj, method),
                                              "method", id=f"{qualified}.{method}"))
            elif callable(obj):
                found.append(pytest.param(qualified, obj, "function", id=qualified))
    return found


@pytest.mark.parametrize(("qualified", "obj", "what"), _public_objects())
def test_public_name_has_a_numpydoc_docstring(qualified, obj, what):
    sections = _sections(obj.__doc__)
    required = ("Parameters", "Examples") if what == "class" else REQUIRED_SECTIONS
    missing = [s for s in required if not sections.get(s)]
    assert not missing, f"{qualified}: no {', '.join(missing)} section in its docstring"
    assert ">>>" in sections["Examples"], f"{qualified}: its Examples section has no example"
    signature = inspect.signature(obj)
    parameters = [p for p in signature.parameters if p != "self"]
    undocumented = set(parameters) - _documented_parameters(sections["Parameters"])
    assert not undocumented, f"{qualified}: parameters not documented: {sorted(undocumented)}"


def test_every_public_module_name_is_in_the_docstring_checks():
    """The check above covers every name of ``__all__`` that is not data."""
    data = {name for name in fastxent.__all__ if not callable(getattr(fastxent, name))}
    assert data == {"backend", "openmp_enabled"}


def test_python_m_fastxent_examples_match_on_each_backend(backend):
    from fastxent import __main__ as main_module
    for description, got, published, tolerance in main_module._examples():
        assert np.allclose(got, published, rtol=tolerance, atol=0.0), description


def test_python_m_fastxent_says_slower_when_it_is():
    from fastxent import __main__ as main_module
    assert main_module._speed(3.0, 1.0) == "fastxent is   3.0x faster"
    assert main_module._speed(0.7, 1.0) == "fastxent is   1.4x slower"
