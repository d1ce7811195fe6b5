"""Build fastxent's compiled kernels, falling back to the pure-Python package loudly.

The extension is cythonized with -O3 and OpenMP.  Where the compiler has no OpenMP the kernels
are built serially, with a warning; where the extension cannot be built at all, the package
still installs (the NumPy fallback ``fastxent._kernels_py`` then serves every call), with a
warning -- unless ``FASTXENT_REQUIRE_EXTENSION=1`` is set, which turns both into errors.
No -march=native and no -ffast-math: the wheel must run on any CPU of its architecture and keep
IEEE inf/NaN semantics.

``FASTXENT_DEBUG_BUILD=1`` builds the checked extension instead: Cython's ``boundscheck``,
``wraparound`` and ``initializedcheck`` on, and the C code compiled with
``-fsanitize=address,undefined`` (findings abort). Python itself is not sanitized, so run it with
``LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``; ``.ci/run``
shows how.
"""

import os
import re
import shutil
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE_EXTENSION = os.environ.get("FASTXENT_REQUIRE_EXTENSION", "") == "1"
KERNELS = "src/fastxent/_kernels_c.pyx"
DEBUG_BUILD = os.environ.get("FASTXENT_DEBUG_BUILD", "") == "1"
# The checked build: every memoryview access checked, and the C code under ASan and UBSan.
DEBUG_DIRECTIVES = {"boundscheck": True, "wraparound": True, "initializedcheck": True}
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def warn_loudly(message: str) -> None:
    bar = "*" * 78
    print(f"\n{bar}\nWARNING (fastxent): {message}\n{bar}\n", file=sys.stderr, flush=True)


class BuildExtWithFallback(build_ext):
    """Adds OpenMP flags when the compiler supports them; tolerates a failed build unless required."""

    def build_extensions(self) -> None:
        if DEBUG_BUILD:
            self.force = True  # never keep a normal build's objects or library for a checked one
        openmp = self._compiler_has_openmp()
        if not openmp:
            message = "the C compiler has no OpenMP: the kernels are built single-threaded."
            if REQUIRE_EXTENSION:
                raise RuntimeError(message + " (FASTXENT_REQUIRE_EXTENSION=1)")
            warn_loudly(message)
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        try:
            super().build_extensions()
        except Exception as exc:  # compiler missing or failing: keep the pure-Python package
            if REQUIRE_EXTENSION:
                raise
            warn_loudly(
                f"the compiled extension could not be built ({exc}); fastxent will use its "
                "pure-Python NumPy fallback, which is correct but much slower."
            )

    def _compiler_has_openmp(self) -> bool:
        source = textwrap.dedent(
            """
            #include <omp.h>
            int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
            """
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "check_openmp.c")
            with open(path, "w") as f:
                f.write(source)
            try:
                objects = self.compiler.compile([path], output_dir=tmp, extra_postargs=["-fopenmp"])
                self.compiler.link_executable(
                    objects, "check_openmp", output_dir=tmp, extra_postargs=["-fopenmp"]
                )
            except Exception:
                return False
        return True


def checked_copy(pyx: str, headers: list) -> str:
    """A copy of ``pyx`` under build/checked/ with the checks of DEBUG_DIRECTIVES turned on.

    Directives in a file's ``# cython:`` header override cythonize's, so the copy's header has
    them switched on; its generated C and objects never mix with the normal build's.
    """
    target_dir = os.path.join("build", "checked", os.path.dirname(pyx))
    os.makedirs(target_dir, exist_ok=True)
    with open(pyx) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break  # the header comments end at the first line of code
        for name in DEBUG_DIRECTIVES:
            line = re.sub(rf"\b{name}\s*=\s*False\b", f"{name}=True", line)
        lines[i] = line
    target = os.path.join(target_dir, os.path.basename(pyx))
    with open(target, "w") as f:
        f.write("\n".join(lines))
    for header in headers:
        shutil.copy(header, target_dir)
    return target


def extensions() -> list:
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        if REQUIRE_EXTENSION:
            raise
        warn_loudly(f"Cython or NumPy is missing at build time ({exc}); installing the fallback only.")
        return []
    ext = Extension(
        "fastxent._kernels_c",
        [KERNELS],
        depends=["src/fastxent/_rows.h", "src/fastxent/_rows_template.h"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # -fno-math-errno and -fno-trapping-math let the compiler vectorise the exp loops of
        # _rows.h (if-converting their selects); neither changes a result, inf and NaN included.
        extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"],
        extra_link_args=[],
    )
    directives = {"language_level": 3}
    if DEBUG_BUILD:
        ext.sources = [checked_copy(KERNELS, ext.depends)]
        ext.include_dirs.append(os.path.dirname(KERNELS))
        ext.extra_compile_args = ["-O1", "-g", "-fno-math-errno", "-fno-trapping-math", *SANITIZE]
        ext.extra_link_args = list(SANITIZE)
        directives.update(DEBUG_DIRECTIVES)
    try:
        return cythonize([ext], compiler_directives=directives, force=DEBUG_BUILD)
    except Exception as exc:
        if REQUIRE_EXTENSION:
            raise
        warn_loudly(f"cythonizing the kernels failed ({exc}); installing the fallback only.")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtWithFallback})
