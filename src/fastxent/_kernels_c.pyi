"""Stubs of the compiled kernels (``_kernels_c.pyx``); ``_kernels_py.py`` has the same interface.

Arrays are 3-D ``(A, C, B)`` strided views whose rows are the ``A * B`` positions around the
class axis ``C``; per-row arrays are ``(A, B)``. Floating arrays of one call share one dtype,
float32 or float64; labels may be any integer dtype; ``weight`` and per-row float arrays are
float64. Kernels never raise on data: they return counts that the API layer turns into errors.
"""

import numpy as np
import numpy.typing as npt

openmp_enabled: bool

def max_threads() -> int: ...

ISAS: tuple[str, ...]

def select_isa(max_isa: str) -> str: ...
def current_isa() -> str: ...
def logsumexp(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
              n_threads: int) -> None: ...
def softmax(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating], n_threads: int) -> None: ...
def log_softmax(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
                n_threads: int) -> None: ...
def sparse_label_check(
    labels: npt.NDArray[np.integer],
    n_classes: int,
    ignore_index: int,
    has_ignore: bool,
    weight: npt.NDArray[np.float64] | None,
    n_threads: int,
) -> tuple[int, float]: ...
def sparse_xent(
    x: npt.NDArray[np.floating],
    labels: npt.NDArray[np.integer],
    weight: npt.NDArray[np.float64] | None,
    ignore_index: int,
    has_ignore: bool,
    smoothing: float,
    loss_out: npt.NDArray[np.float64],
    grad_out: npt.NDArray[np.floating] | None,
    grad_scale: float,
    grad_rows: npt.NDArray[np.float64] | None,
    n_threads: int,
    z_loss: float = ...,
    softcap: float = ...,
) -> int: ...
def dense_xent(
    x: npt.NDArray[np.floating],
    labels: npt.NDArray[np.floating],
    weight: npt.NDArray[np.float64] | None,
    smoothing: float,
    loss_out: npt.NDArray[np.float64],
    grad_out: npt.NDArray[np.floating] | None,
    grad_scale: float,
    grad_rows: npt.NDArray[np.float64] | None,
    n_threads: int,
    z_loss: float = ...,
    softcap: float = ...,
) -> None: ...
