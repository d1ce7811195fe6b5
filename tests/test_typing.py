"""The public API is typed precisely, and the typing check covers all of it.

`.ci/run` runs ``mypy --strict`` on ``tests/typecheck/user_script.py``, whose ``assert_type``
calls fail on a result typed ``Any``; these tests make sure that script calls every public
function, and that no public signature leaves a parameter or a result unannotated (``Any`` to a
type checker) or annotated ``Any`` (``np.floating[Any]``, NumPy's own spelling of "any
precision", is the one ``Any`` allowed).
"""

import inspect
import pathlib
import re

import fastxent

SCRIPT = pathlib.Path(__file__).resolve().parent / "typecheck" / "user_script.py"


def _public_callables():
    for name in fastxent.__all__:
        value = getattr(fastxent, name)
        if inspect.isclass(value):
            yield name, value.__init__
            for method in ("__call__", "with_grad", "__repr__"):
                yield f"{name}.{method}", getattr(value, method)
        elif callable(value):
            yield name, value


def test_the_typing_script_uses_every_public_name():
    text = SCRIPT.read_text()
    missing = [name for name in fastxent.__all__ if not re.search(rf"\bfx\.{name}\b", text)]
    assert not missing, f"not used in {SCRIPT.name}: {missing}"
    for call in ("loss_fn(", "loss_fn.with_grad(", "repr(loss_fn)"):
        assert call in text, call


def test_every_public_parameter_and_result_is_annotated_without_any():
    for name, func in _public_callables():
        signature = inspect.signature(func)
        annotations = {p.name: p.annotation for p in signature.parameters.values()
                       if p.name != "self"}
        annotations["return"] = signature.return_annotation
        for what, annotation in annotations.items():
            assert annotation is not inspect.Parameter.empty, f"{name}: {what} is not annotated"
            text = str(annotation).replace("np.floating[Any]", "")
            assert not re.search(r"\bAny\b", text), f"{name}: {what} is {annotation}"
