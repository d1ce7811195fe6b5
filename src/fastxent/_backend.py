"""Choose the kernel module: the compiled ``_kernels_c``, or the NumPy fallback ``_kernels_py``.

``FASTXENT_PURE_PYTHON=1`` forces the fallback; ``FASTXENT_MAX_ISA=avx2`` (or ``baseline``)
keeps the compiled module's vector loops at most at that instruction set (by default they are
the best the CPU has: AVX-512, AVX2 or the baseline of the build), to measure or test another
CPU's path on this one; ``FASTXENT_REQUIRE_EXTENSION=1`` makes a missing
compiled module an ImportError instead of a fallback (CI sets it, so the fallback is never
tested twice by accident); otherwise a missing compiled module falls back with a RuntimeWarning
that points at the user's import and gives the command that rebuilds the extension. The
variables are read once, at import, by the rule of ``_flags.env_flag``. The public functions
look up ``kernels`` at call time, so the test suite can swap it to run every test on both
modules.
"""

import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any

from . import _validation as check
from ._flags import env_choice as _choice
from ._flags import env_flag as _flag

# What rebuilds the extension (pip's cache may hold a wheel built without it, hence no cache).
REBUILD_COMMAND = "pip install --force-reinstall --no-cache-dir --no-binary fastxent fastxent"
REBUILD_CHECKOUT_COMMAND = "pip install --force-reinstall --no-cache-dir ."


def _is_importlib(filename: str) -> bool:
    # the frames warnings.warn skips when it counts a stacklevel (CPython's _is_internal_frame)
    return "importlib" in filename and "_bootstrap" in filename


def _stacklevel_outside_package() -> int:
    """The stacklevel that makes a warning issued by the caller of this function point at the
    first frame outside fastxent (the user's ``import fastxent``), counted as warnings.warn
    counts: importlib's frames are not counted."""
    package_dir = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None:
        frame = frame.f_back
        filename = frame.f_code.co_filename
        if _is_importlib(filename):
            continue
        level += 1
        if not os.path.abspath(filename).startswith(package_dir):
            break
    return level


def _load() -> tuple[ModuleType, str]:
    if _flag("FASTXENT_PURE_PYTHON"):
        if _flag("FASTXENT_REQUIRE_EXTENSION"):
            raise ImportError(
                "fastxent: FASTXENT_PURE_PYTHON and FASTXENT_REQUIRE_EXTENSION are both set"
            )
        from . import _kernels_py

        return _kernels_py, "python"
    try:
        from . import _kernels_c
    except ImportError as exc:
        built = importlib.util.find_spec(f"{__package__}._kernels_c") is not None
        reason = f"it does not import: {exc}" if built else "it was not built"
        if _flag("FASTXENT_REQUIRE_EXTENSION"):
            raise ImportError(
                f"fastxent: the compiled extension fastxent._kernels_c is unavailable ({reason}) "
                f"and FASTXENT_REQUIRE_EXTENSION is set; rebuild it with a C compiler: "
                f"`{REBUILD_COMMAND}` (in a source checkout: `{REBUILD_CHECKOUT_COMMAND}`)"
            ) from exc
        # Said at import, where the user sees it: pip shows a build's output only when it fails.
        warnings.warn(
            f"fastxent: the compiled extension is unavailable ({reason}); using the pure-NumPy "
            "fallback, which is correct but much slower. To build the extension, install a C "
            f"compiler and run `{REBUILD_COMMAND}` (in a source checkout: "
            f"`{REBUILD_CHECKOUT_COMMAND}`); to choose the fallback deliberately (and silence "
            "this warning), set FASTXENT_PURE_PYTHON=1.",
            RuntimeWarning,
            stacklevel=_stacklevel_outside_package(),
        )
        from . import _kernels_py

        return _kernels_py, "python"
    return _kernels_c, "compiled"


kernels, name = _load()
openmp_enabled: bool = bool(kernels.openmp_enabled)
_max_isa = _choice("FASTXENT_MAX_ISA", kernels.ISAS)
# the instruction set of the compiled loops ("numpy" for the fallback)
isa: str = kernels.current_isa() if _max_isa is None else kernels.select_isa(_max_isa)


# GNU OpenMP cannot run a parallel region in a child forked after the parent ran one: the child
# would wait forever for the parent's worker threads. Such a child computes serially instead
# (its results are bitwise the same: they never depend on the thread count). The parent's
# OpenMP workers may also be another library's, wherever that library's runtime is the one
# fastxent's kernels call, so a child forked while such a library is loaded computes serially
# too. PyTorch is one, however fastxent was built: it ships libgomp.so.1, which the loader
# shares with an extension linked to the system's libgomp.so.1 (the same soname), and it loads
# it RTLD_GLOBAL, so that an auditwheel-repaired extension, whose bundled copy is renamed,
# still binds to PyTorch's runtime when torch was imported first (imported after fastxent,
# the two runtimes stay apart; nothing at fork time tells the cases apart cheaply, so both
# are treated alike). Counting the parent's threads would not tell either: NumPy's OpenBLAS
# starts its own at import. (scikit-learn's OpenMP runtime is a renamed copy loaded locally.)
OPENMP_SHARERS = ("torch",)
parallel_used = False
forked_after_parallel = False
_sharer_loaded = False


def _before_fork() -> None:
    global _sharer_loaded
    _sharer_loaded = any(name in sys.modules for name in OPENMP_SHARERS)


def _after_fork_in_child() -> None:
    global forked_after_parallel
    forked_after_parallel = forked_after_parallel or parallel_used or _sharer_loaded


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def effective_n_threads(n_threads: Any, concurrent_calls: int = 1) -> int:
    """The OpenMP threads of one kernel call, for every caller: ``n_threads=None`` -> the
    threads OpenMP may use now (cores, unless OMP_NUM_THREADS or threadpoolctl limit them),
    shared among ``concurrent_calls`` (>= 1) calls that run at once, at least 1; an int >= 1
    -> that many. 1 in a child forked after a parallel region (see ``forked_after_parallel``).
    Records in ``parallel_used`` that a call may run in parallel."""
    global parallel_used
    threads = check.n_threads(n_threads, kernels.max_threads() // concurrent_calls)
    if forked_after_parallel:
        return 1
    if threads > 1:
        parallel_used = True
    return threads
