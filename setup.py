"""Build fastxent's compiled kernels; refuse, loudly, to install without them unless asked to.

The extension is cythonized and compiled with optimisation (``-O3`` for GCC and clang, ``/O2``
for MSVC) and OpenMP, and its symbols stripped (``-s``; ``-Wl,-x`` on macOS). No -march=native
and no -ffast-math: the wheel must run on any CPU of its architecture and keep IEEE inf/NaN
semantics (the x86-64 kernels pick AVX2 or AVX-512 loops at run time: see ``_rows.h``).

Two probes run before the build, so that each failure names its cause: first whether the C
compiler compiles and links at all (if not, the build fails and says how to get a compiler, or
how to install the NumPy fallback deliberately), then which OpenMP flags it takes: ``/openmp``
for MSVC; ``-Xpreprocessor -fopenmp`` and ``-lomp`` for Apple clang (with Homebrew's libomp
when it is installed); ``-fopenmp`` otherwise. Without OpenMP the kernels are built serially,
with a warning.

Environment variables (on/off ones read by ``src/fastxent/_flags.py``: 1/true/yes/on or
0/false/no/off, anything else an error):

- ``FASTXENT_PURE_PYTHON_BUILD=1``: build no extension (the package then runs on its NumPy
  fallback). Without it, a build that cannot compile the extension fails: pip shows a failed
  build's output but hides a successful one's, and caches the wheel it built, so a silent
  fallback would stay unseen and be reinstalled from the cache after a compiler is installed.
  The wheel is tagged for the platform either way, never ``py3-none-any``.
- ``FASTXENT_REQUIRE_OPENMP=1``: a compiler without OpenMP fails the build instead of warning.
- ``FASTXENT_REQUIRE_EXTENSION=1``: contradicts ``FASTXENT_PURE_PYTHON_BUILD=1`` (an error);
  also read at import, where it makes a missing extension an ImportError.
- ``FASTXENT_OPENMP_CFLAGS`` / ``FASTXENT_OPENMP_LDFLAGS``: the OpenMP compile and link flags
  (split as by a POSIX shell), replacing the probe's candidates; if the compiler rejects them
  the build fails.
- ``FASTXENT_NO_DISPATCH=1``: the vector loops for the baseline ISA only (no AVX2 and AVX-512
  copies chosen at run time).
- ``FASTXENT_DEBUG_BUILD=1`` builds the checked extension instead: Cython's ``boundscheck``,
  ``wraparound`` and ``initializedcheck`` on, and the C code compiled with
  ``-fsanitize=address,undefined`` (findings abort), not stripped. Python itself is not
  sanitized, so run it with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)
  ASAN_OPTIONS=detect_leaks=0``; ``.ci/run`` shows how.
"""

import importlib.util
import os
import shlex
import sys
import tempfile
import textwrap

from setuptools import Distribution, Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_flags():
    # the package's own rule for on/off variables, loaded by path: the package is not built yet
    spec = importlib.util.spec_from_file_location(
        "_fastxent_flags", os.path.join(HERE, "src", "fastxent", "_flags.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


env_flag = _load_flags().env_flag

PURE_PYTHON_BUILD = env_flag("FASTXENT_PURE_PYTHON_BUILD")
REQUIRE_EXTENSION = env_flag("FASTXENT_REQUIRE_EXTENSION")
REQUIRE_OPENMP = env_flag("FASTXENT_REQUIRE_OPENMP")
DEBUG_BUILD = env_flag("FASTXENT_DEBUG_BUILD")
NO_DISPATCH = env_flag("FASTXENT_NO_DISPATCH")
OPENMP_CFLAGS = os.environ.get("FASTXENT_OPENMP_CFLAGS")
OPENMP_LDFLAGS = os.environ.get("FASTXENT_OPENMP_LDFLAGS")
if PURE_PYTHON_BUILD and REQUIRE_EXTENSION:
    sys.exit("fastxent: FASTXENT_PURE_PYTHON_BUILD and FASTXENT_REQUIRE_EXTENSION are both set")

KERNELS = "src/fastxent/_kernels_c.pyx"
# the C headers the kernels include (a change to one rebuilds the extension)
HEADERS = ["_math.h", "_rows.h", "_type_kernels.h", "_elements_template.h", "_loops_template.h",
           "_exp_simd.h", "_stream_simd.h", "_rows_template.h"]
# Cython's directives, here and not in the .pyx, so that the checked build changes them without
# touching a source: the kernels index memoryviews only within the shapes the API validated.
DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False,
              "initializedcheck": False, "cdivision": True, "cpow": True, "autotestdict": False}
# The checked build: every memoryview access checked, and the C code under ASan and UBSan.
DEBUG_DIRECTIVES = {"boundscheck": True, "wraparound": True, "initializedcheck": True}
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
# -fno-math-errno and -fno-trapping-math let GCC and clang vectorise the exp loops of _rows.h
# (if-converting their selects); neither changes a result, inf and NaN included. MSVC's default
# floating-point model (/fp:precise) keeps IEEE semantics as they are.
UNIX_CFLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
MSVC_CFLAGS = ["/O2"]

FALLBACK_HINT = (
    "To install the much slower pure-NumPy fallback deliberately, set "
    "FASTXENT_PURE_PYTHON_BUILD=1 (then `import fastxent` warns unless FASTXENT_PURE_PYTHON=1)."
)


class BuildFailure(RuntimeError):
    """A build that cannot give what was asked for; its message says what to do."""


def banner(kind: str, message: str) -> None:
    bar = "*" * 78
    print(f"\n{bar}\n{kind} (fastxent): {message}\n{bar}\n", file=sys.stderr, flush=True)


def homebrew_libomp() -> list:
    """Homebrew's libomp prefixes that exist (it is keg-only: not on the default paths)."""
    prefixes = [os.environ.get("HOMEBREW_PREFIX", ""), "/opt/homebrew", "/usr/local"]
    found = []
    for prefix in prefixes:
        path = os.path.join(prefix, "opt", "libomp") if prefix else ""
        if path and os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def openmp_candidates(compiler_type: str) -> list:
    """(compile flags, link flags) to try in order, for this compiler and platform."""
    if OPENMP_CFLAGS is not None or OPENMP_LDFLAGS is not None:
        return [(shlex.split(OPENMP_CFLAGS or ""), shlex.split(OPENMP_LDFLAGS or ""))]
    if compiler_type == "msvc":
        return [(["/openmp"], [])]
    candidates = []
    if sys.platform == "darwin":  # Apple clang: the driver has no -fopenmp, libomp is separate
        for prefix in homebrew_libomp():
            candidates.append(
                (["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                 [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"])
            )
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    candidates.append((["-fopenmp"], ["-fopenmp"]))  # GCC, LLVM clang
    return candidates


class BuildExt(build_ext):
    """Probes the compiler, then its OpenMP flags, then builds; every failure names its cause."""

    def build_extensions(self) -> None:
        if DEBUG_BUILD:
            self.force = True  # never keep a normal build's objects or library for a checked one
        msvc = self.compiler.compiler_type == "msvc"
        self._probe_compiler()
        openmp = self._probe_openmp()
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args.extend(openmp[0])
                ext.extra_link_args.extend(openmp[1])
            if msvc:  # GCC's flags would be ignored with a warning each
                ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in UNIX_CFLAGS]
                ext.extra_compile_args[:0] = MSVC_CFLAGS
            elif not DEBUG_BUILD:
                ext.extra_link_args.append("-Wl,-x" if sys.platform == "darwin" else "-s")
        super().build_extensions()

    def _try_build(self, source: str, cflags: list, ldflags: list) -> str:
        """'' if ``source`` compiles and links into an executable with these flags, else why not."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "probe.c")
            with open(path, "w") as f:
                f.write(textwrap.dedent(source))
            try:
                objects = self.compiler.compile([path], output_dir=tmp, extra_postargs=cflags)
                self.compiler.link_executable(objects, "probe", output_dir=tmp,
                                              extra_postargs=ldflags)
            except Exception as exc:  # CompileError, LinkError, or the compiler is not found
                return f"{type(exc).__name__}: {exc}"
        return ""

    def _probe_compiler(self) -> None:
        error = self._try_build("int main(void) { return 0; }\n", [], [])
        if error:
            command = getattr(self.compiler, "compiler_so", None) or [self.compiler.compiler_type]
            compiler = command[0]
            raise BuildFailure(
                f"no working C compiler: `{compiler}` cannot build a trivial program "
                f"({error}). fastxent's kernels are C (with OpenMP): install a "
                "C compiler (Debian/Ubuntu: apt-get install gcc; Fedora: dnf install gcc; "
                "Alpine: apk add build-base; macOS: xcode-select --install and brew install "
                "libomp; Windows: the Visual Studio Build Tools) and build again, or set CC. "
                + FALLBACK_HINT
            )

    def _probe_openmp(self):
        """The first (compile, link) flags with which an OpenMP program builds, or None."""
        source = """
            #include <omp.h>
            int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
            """
        errors = []
        for cflags, ldflags in openmp_candidates(self.compiler.compiler_type):
            error = self._try_build(source, cflags, ldflags)
            if not error:
                return cflags, ldflags
            errors.append(f"{' '.join(cflags + ldflags)}: {error}")
        tried = "; ".join(errors)
        if OPENMP_CFLAGS is not None or OPENMP_LDFLAGS is not None:
            raise BuildFailure(
                "the C compiler builds no OpenMP program with FASTXENT_OPENMP_CFLAGS="
                f"{OPENMP_CFLAGS!r} and FASTXENT_OPENMP_LDFLAGS={OPENMP_LDFLAGS!r} ({tried})"
            )
        message = (
            "the C compiler builds programs but has no OpenMP (tried " + tried + "): "
            + ("on macOS, brew install libomp; " if sys.platform == "darwin" else "")
            + "or give the flags in FASTXENT_OPENMP_CFLAGS and FASTXENT_OPENMP_LDFLAGS."
        )
        if REQUIRE_OPENMP:
            raise BuildFailure(message + " (FASTXENT_REQUIRE_OPENMP=1)")
        banner("WARNING", message + " The kernels are built single-threaded.")
        return None


class PlatformDistribution(Distribution):
    """Every wheel of fastxent is tagged for its platform and Python, never ``py3-none-any``:
    a wheel without the extension (FASTXENT_PURE_PYTHON_BUILD=1) must not be picked up by
    another platform or Python that could have compiled it."""

    def has_ext_modules(self) -> bool:
        return True


def extensions() -> list:
    if PURE_PYTHON_BUILD:
        banner("NOTE", "FASTXENT_PURE_PYTHON_BUILD=1: installing the pure-NumPy fallback only.")
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        raise BuildFailure(
            f"Cython or NumPy is missing at build time ({exc}). A build without build "
            "isolation needs them installed: pip install 'Cython>=3.0.8' 'numpy>=2'. "
            + FALLBACK_HINT
        ) from exc
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if NO_DISPATCH:
        macros.append(("FASTXENT_NO_DISPATCH", "1"))
    ext = Extension(
        "fastxent._kernels_c",
        [KERNELS],
        depends=[f"src/fastxent/{name}" for name in HEADERS],
        include_dirs=[numpy.get_include()],
        define_macros=macros,
        extra_compile_args=list(UNIX_CFLAGS),
        extra_link_args=[],
    )
    if not DEBUG_BUILD:
        return cythonize([ext], compiler_directives=DIRECTIVES)
    # the checked build's generated C goes to build/checked/, never mixing with the normal one's
    ext.include_dirs.append(os.path.dirname(KERNELS))
    ext.extra_compile_args = ["-O1", "-g", "-fno-math-errno", "-fno-trapping-math", *SANITIZE]
    ext.extra_link_args = list(SANITIZE)
    return cythonize([ext], compiler_directives={**DIRECTIVES, **DEBUG_DIRECTIVES}, force=True,
                     build_dir=os.path.join("build", "checked"))


def main() -> None:
    try:
        setup(
            ext_modules=extensions(),
            cmdclass={"build_ext": BuildExt},
            distclass=PlatformDistribution,
        )
    except BuildFailure as exc:
        # pip prints a failed build's output without -v: this is the line the user reads
        banner("ERROR", str(exc))
        sys.exit("fastxent: the build failed: see the ERROR above")


if __name__ == "__main__":  # as pip's build backend and `python setup.py` run it; tests import it
    main()
