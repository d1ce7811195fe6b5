"""setup.py's probes, with a stand-in compiler: each build failure names its own cause.

setup.py is loaded as a module (its ``main()`` runs only as ``__main__``, as pip's build backend
runs it), so nothing is compiled here. Skipped where the tests do not sit in a source tree.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

SETUP_PY = pathlib.Path(__file__).resolve().parent.parent / "setup.py"
if not SETUP_PY.exists():
    pytest.skip("setup.py is not next to the tests", allow_module_level=True)


@pytest.fixture
def setup_py(monkeypatch):
    pytest.importorskip("setuptools")
    for name in ("FASTXENT_PURE_PYTHON_BUILD", "FASTXENT_REQUIRE_EXTENSION",
                 "FASTXENT_REQUIRE_OPENMP", "FASTXENT_OPENMP_CFLAGS", "FASTXENT_OPENMP_LDFLAGS"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("fastxent_setup", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeCompiler:
    """A distutils compiler whose compile step fails when ``rejects(flags)`` is true."""

    compiler_type = "unix"
    compiler_so = ["fake-cc", "-O2"]

    def __init__(self, rejects):
        self.rejects = rejects
        self.calls = []

    def compile(self, sources, output_dir=None, extra_postargs=None):
        from setuptools.errors import CompileError

        self.calls.append(list(extra_postargs or []))
        if self.rejects(list(extra_postargs or [])):
            raise CompileError("fake-cc: rejected")
        return [source + ".o" for source in sources]

    def link_executable(self, objects, name, output_dir=None, extra_postargs=None):
        return None


def _build_ext(setup_py, compiler):
    from setuptools import Distribution

    command = setup_py.BuildExt(Distribution())
    command.compiler = compiler
    command.extensions = []
    return command


def test_no_compiler_is_named_as_such_before_openmp_is_probed(setup_py):
    compiler = FakeCompiler(rejects=lambda flags: True)
    command = _build_ext(setup_py, compiler)
    with pytest.raises(setup_py.BuildFailure, match="no working C compiler: `fake-cc`") as info:
        command.build_extensions()
    assert "OpenMP" not in str(info.value).split("(", 1)[0]
    assert "FASTXENT_PURE_PYTHON_BUILD=1" in str(info.value)
    assert compiler.calls == [[]]  # the plain probe only


def test_a_compiler_without_openmp_warns_and_builds_serially(setup_py, capsys):
    compiler = FakeCompiler(rejects=lambda flags: bool(flags))
    command = _build_ext(setup_py, compiler)
    command._probe_compiler()
    assert command._probe_openmp() is None
    assert "has no OpenMP" in capsys.readouterr().err


def test_require_openmp_makes_a_compiler_without_openmp_fail(setup_py, monkeypatch):
    monkeypatch.setattr(setup_py, "REQUIRE_OPENMP", True)
    command = _build_ext(setup_py, FakeCompiler(rejects=lambda flags: bool(flags)))
    with pytest.raises(setup_py.BuildFailure, match="has no OpenMP.*FASTXENT_REQUIRE_OPENMP"):
        command._probe_openmp()


def test_the_first_openmp_flags_that_build_are_used(setup_py, monkeypatch):
    monkeypatch.setattr(setup_py.sys, "platform", "linux")
    command = _build_ext(setup_py, FakeCompiler(rejects=lambda flags: False))
    assert command._probe_openmp() == (["-fopenmp"], ["-fopenmp"])


def test_msvc_gets_slash_openmp(setup_py):
    assert setup_py.openmp_candidates("msvc") == [(["/openmp"], [])]


def test_apple_clang_gets_xpreprocessor_and_lomp(setup_py, monkeypatch):
    monkeypatch.setattr(setup_py.sys, "platform", "darwin")
    monkeypatch.setattr(setup_py, "homebrew_libomp", lambda: ["/opt/homebrew/opt/libomp"])
    first, *rest = setup_py.openmp_candidates("unix")
    assert first == (["-Xpreprocessor", "-fopenmp", "-I/opt/homebrew/opt/libomp/include"],
                     ["-L/opt/homebrew/opt/libomp/lib", "-lomp",
                      "-Wl,-rpath,/opt/homebrew/opt/libomp/lib"])
    assert (["-Xpreprocessor", "-fopenmp"], ["-lomp"]) in rest


def test_environment_flags_replace_the_candidates_split_as_by_a_shell(setup_py, monkeypatch):
    monkeypatch.setattr(setup_py, "OPENMP_CFLAGS", "-Xpreprocessor -fopenmp -I'/a b/include'")
    monkeypatch.setattr(setup_py, "OPENMP_LDFLAGS", "-lomp")
    assert setup_py.openmp_candidates("unix") == [
        (["-Xpreprocessor", "-fopenmp", "-I/a b/include"], ["-lomp"])]


def test_environment_flags_the_compiler_rejects_fail_the_build(setup_py, monkeypatch):
    monkeypatch.setattr(setup_py, "OPENMP_CFLAGS", "-fbogus-openmp")
    monkeypatch.setattr(setup_py, "OPENMP_LDFLAGS", None)
    command = _build_ext(setup_py, FakeCompiler(rejects=lambda flags: bool(flags)))
    with pytest.raises(setup_py.BuildFailure, match="FASTXENT_OPENMP_CFLAGS='-fbogus-openmp'"):
        command._probe_openmp()


def test_every_distribution_counts_as_platform_specific(setup_py):
    # so that a wheel built without the extension is never tagged py3-none-any
    assert setup_py.PlatformDistribution().has_ext_modules()


def test_setup_py_reads_flags_by_the_package_rule():
    # a value the rule rejects stops the build before anything is built, naming the variable
    pytest.importorskip("setuptools")
    env = dict(os.environ, FASTXENT_PURE_PYTHON_BUILD="maybe")
    result = subprocess.run([sys.executable, str(SETUP_PY), "--version"], env=env,
                            cwd=SETUP_PY.parent, capture_output=True, text=True)
    assert result.returncode != 0
    assert "FASTXENT_PURE_PYTHON_BUILD='maybe'" in result.stderr
