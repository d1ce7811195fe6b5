"""The two kernel modules have one interface, and the environment variables pick between them."""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent import _kernels_py
from fastxent._flags import env_flag

REQUIRED = env_flag("FASTXENT_REQUIRE_EXTENSION")


def _compiled():
    try:
        from fastxent import _kernels_c
    except ImportError as exc:
        if REQUIRED:
            pytest.fail(f"FASTXENT_REQUIRE_EXTENSION=1 but the extension is missing: {exc}")
        pytest.skip(f"compiled extension not built: {exc}")
    return _kernels_c


def _public(module):
    return {name: getattr(module, name) for name in dir(module)
            if not name.startswith("_") and callable(getattr(module, name))
            and getattr(getattr(module, name), "__module__", module.__name__) == module.__name__}


def test_kernel_modules_define_the_same_functions_with_the_same_parameters():
    compiled, python = _public(_compiled()), _public(_kernels_py)
    assert set(compiled) == set(python)
    for name in compiled:
        assert (list(inspect.signature(compiled[name]).parameters)
                == list(inspect.signature(python[name]).parameters)), name


def test_compiled_module_reports_openmp_and_threads():
    compiled = _compiled()
    assert isinstance(compiled.openmp_enabled, bool)
    assert compiled.max_threads() >= 1
    if os.environ.get("FASTXENT_REQUIRE_OPENMP") == "1":  # CI, but for its build without OpenMP
        assert compiled.openmp_enabled, "FASTXENT_REQUIRE_OPENMP=1 but the kernels are serial"
    if not compiled.openmp_enabled:
        assert compiled.max_threads() == 1


def test_import_picks_the_compiled_backend_when_it_is_built():
    _compiled()
    assert fastxent.backend == "compiled"
    assert fastxent.openmp_enabled == fastxent._backend.kernels.openmp_enabled


def _import_in_subprocess(env_update):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTXENT_PURE_PYTHON", "FASTXENT_REQUIRE_EXTENSION")}
    env.update(env_update)
    code = "import fastxent; print(fastxent.backend, fastxent.openmp_enabled)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_pure_python_variable_forces_the_fallback():
    result = _import_in_subprocess({"FASTXENT_PURE_PYTHON": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", "False"]


def test_pure_python_and_require_extension_together_fail_loudly():
    result = _import_in_subprocess({"FASTXENT_PURE_PYTHON": "1", "FASTXENT_REQUIRE_EXTENSION": "1"})
    assert result.returncode != 0
    assert "FASTXENT_PURE_PYTHON" in result.stderr and "FASTXENT_REQUIRE_EXTENSION" in result.stderr


def test_fallback_results_equal_compiled_results_through_the_public_api(monkeypatch):
    compiled = _compiled()
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((257, 13))
    labels = rng.integers(0, 13, 257)
    results = {}
    for module in (compiled, _kernels_py):
        monkeypatch.setattr(fastxent._backend, "kernels", module)
        results[module.__name__] = fastxent.cross_entropy_with_grad(logits, labels, reduction="sum")
    (loss_c, grad_c), (loss_p, grad_p) = results.values()
    np.testing.assert_allclose(loss_c, loss_p, rtol=4 * np.finfo(np.float64).eps)
    np.testing.assert_allclose(grad_c, grad_p, rtol=0, atol=8 * np.finfo(np.float64).eps)


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("", False), ("0", False), ("False", False), ("no", False), ("off", False),
])
def test_flag_rule_reads_on_and_off_words(value, expected):
    assert env_flag("FASTXENT_X", {"FASTXENT_X": value}) is expected


def test_flag_rule_reads_an_unset_variable_as_off():
    assert env_flag("FASTXENT_X", {}) is False


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "y"])
def test_flag_rule_rejects_other_values_naming_the_variable(value):
    with pytest.raises(ValueError, match="FASTXENT_X"):
        env_flag("FASTXENT_X", {"FASTXENT_X": value})


def test_an_unreadable_flag_fails_the_import_naming_the_variable():
    result = _import_in_subprocess({"FASTXENT_PURE_PYTHON": "maybe"})
    assert result.returncode != 0
    assert "FASTXENT_PURE_PYTHON='maybe'" in result.stderr


_FALLBACK_IMPORT = """\
import sys, warnings
sys.modules["fastxent._kernels_c"] = None  # the extension does not import
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import fastxent
(w,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
print(w.filename, w.lineno, fastxent.backend)
print(w.message)
"""


def test_fallback_warning_points_at_the_users_import_and_says_how_to_rebuild(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(_FALLBACK_IMPORT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTXENT_PURE_PYTHON", "FASTXENT_REQUIRE_EXTENSION")}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where, message = result.stdout.split("\n", 1)
    assert where.split() == [str(script), "5", "python"]
    assert fastxent._backend.REBUILD_COMMAND in message
    assert "--no-cache-dir" in fastxent._backend.REBUILD_COMMAND


def _isa_in_subprocess(max_isa):
    env = {k: v for k, v in os.environ.items() if k != "FASTXENT_PURE_PYTHON"}
    env["FASTXENT_MAX_ISA"] = max_isa
    code = "from fastxent import _backend; print(_backend.isa)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def _cpu_isa(compiled):
    """The best ISA of this CPU, whatever this process selected"""
    current = compiled.current_isa()
    best = compiled.select_isa("avx512")
    compiled.select_isa(current)
    return best


def test_max_isa_variable_caps_the_compiled_loops():
    compiled = _compiled()
    best = _cpu_isa(compiled)
    for cap in compiled.ISAS:
        result = _isa_in_subprocess(cap)
        assert result.returncode == 0, result.stderr
        expected = min(cap, best, key=compiled.ISAS.index)
        assert result.stdout.split() == [expected]


def test_an_unknown_max_isa_fails_the_import_naming_the_variable_and_the_choices():
    result = _isa_in_subprocess("avx3")
    assert result.returncode != 0
    assert "FASTXENT_MAX_ISA='avx3'" in result.stderr
    assert "baseline, avx2, avx512" in result.stderr


def test_select_isa_never_exceeds_the_cpu_and_rejects_unknown_names():
    compiled = _compiled()
    current, best = compiled.current_isa(), _cpu_isa(compiled)
    try:
        assert compiled.select_isa("baseline") == "baseline"
        assert compiled.current_isa() == "baseline"
        assert compiled.select_isa("avx512") == best
        with pytest.raises(ValueError):
            compiled.select_isa("sse9")
    finally:
        compiled.select_isa(current)
    assert _kernels_py.select_isa("avx2") == "numpy"
    with pytest.raises(ValueError):
        _kernels_py.select_isa("sse9")
