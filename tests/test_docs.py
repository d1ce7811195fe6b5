"""The printed results in the docstrings and in the README's tour are what the code prints."""

import doctest
import pathlib
import re

import numpy as np
import pytest

import fastxent
import fastxent._api

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
FLAGS = doctest.NORMALIZE_WHITESPACE


def _failures(test):
    """The report of every example of ``test`` whose output differs from the one shown."""
    messages = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with np.printoptions(legacy=False):
        runner.run(test, out=messages.append, clear_globs=False)
    assert runner.tries > 0
    return messages


def _public_docstring_tests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = finder.find(fastxent._api, globs={"np": np, **vars(fastxent._api)})
    return [t for t in tests if t.examples and not t.name.split(".")[-1].startswith("_")]


@pytest.mark.parametrize("test", _public_docstring_tests(), ids=lambda t: t.name.split(".", 2)[-1])
def test_docstring_examples_print_what_they_show(backend, test):
    failures = _failures(test)
    assert not failures, "\n".join(failures)


def test_readme_tour_prints_what_it_shows(backend):
    if not README.exists():
        pytest.skip("README.md is not next to the tests")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(block for block in blocks if ">>>" in block)
    assert text, "the README has no >>> examples"
    test = doctest.DocTestParser().get_doctest(text, {}, "README.md", str(README), 0)
    failures = _failures(test)
    assert not failures, "\n".join(failures)


def test_python_m_fastxent_examples_match_on_each_backend(backend):
    from fastxent import __main__ as main_module
    for description, got, published, tolerance in main_module._examples():
        assert np.allclose(got, published, rtol=tolerance, atol=0.0), description


def test_python_m_fastxent_says_slower_when_it_is():
    from fastxent import __main__ as main_module
    assert main_module._speed(3.0, 1.0) == "fastxent is   3.0x faster"
    assert main_module._speed(0.7, 1.0) == "fastxent is   1.4x slower"
