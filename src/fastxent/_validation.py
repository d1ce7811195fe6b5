"""Every argument check of the public API, and every error message, in one place.

The functions here either return the argument in the form the kernels need (a native-byte-order
array of a kernel dtype, a normalised axis, an int thread count, ...) or raise the exception a
NumPy user expects, with a message that names the argument and the problem. The in-memory API,
the fused linear layer and the Dask bridge (on the dtypes and shapes of lazy arrays) raise
through these functions only.

Two kinds of error are raised elsewhere: ``fastxent.torch`` raises PyTorch's own RuntimeErrors,
with PyTorch's messages, where it must behave as ``torch.nn.functional.cross_entropy`` (a
``label_smoothing`` above 1, an ``ignore_index`` with floating targets, double backward); and
``_backend`` raises ImportError for an unusable build or contradictory environment flags.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Literal, cast

import numpy as np

REDUCTIONS = ("mean", "sum", "none")


class _DefaultIgnoreIndex(int):
    """The type of IGNORE_INDEX_DEFAULT: -100 that tells a default from an explicit argument."""

    __slots__ = ()


#: The default ``ignore_index``: -100, as PyTorch's, but told apart from an explicit -100 by
#: its type, so that an ``ignore_index`` passed with class probabilities (where no target can be
#: ignored) is an error rather than silently ignored.
IGNORE_INDEX_DEFAULT: int = _DefaultIgnoreIndex(-100)
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_INT64 = np.iinfo(np.int64)
_INT64_MIN, _INT64_MAX = int(_INT64.min), int(_INT64.max)


# ------------------------------------------------------------------------------------------
# Arrays
# ------------------------------------------------------------------------------------------

def kernel_ready(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself when a kernel can read it in place, else a native, aligned copy.

    Views, negative strides, Fortran order and read-only arrays pass unchanged; only
    non-native byte order, misaligned data or strides that are not a multiple of the item size
    (rare) are copied.
    """
    if not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.aligned:
        return np.array(arr, order="C")
    itemsize = arr.itemsize
    for stride in arr.strides:
        if stride % itemsize:
            return np.array(arr, order="C")
    return arr


def float_array(x: Any, name: str) -> tuple[np.ndarray, np.dtype]:
    """(array in a kernel dtype, dtype of the results) for a logits-like argument.

    float32 and float64 are used as they are; float16 is computed in float32 and integers, bool
    and long double in float64, with results returned in NumPy's promoted dtype (float16 for
    float16, float64 for integers and bool, long double for long double).
    """
    arr = np.asarray(x)
    if arr.dtype is _FLOAT32 or arr.dtype is _FLOAT64:  # native: the common case, checked fast
        return kernel_ready(arr), arr.dtype
    kind = arr.dtype.kind
    if kind == "f":
        result = arr.dtype.newbyteorder("=")
        if arr.dtype.itemsize == 2:
            compute = np.dtype(np.float32)
        elif arr.dtype.itemsize in (4, 8):
            compute = result
        else:  # long double: computed in float64
            compute = np.dtype(np.float64)
    elif kind in "iub":
        result = compute = np.dtype(np.float64)
    else:
        real_dtype(arr.dtype, name)  # raises
    if arr.dtype != compute:
        arr = arr.astype(compute)
    return kernel_ready(arr), result


def real_dtype(dtype: np.dtype, name: str) -> None:
    """TypeError unless ``dtype`` is real: floating, integer or bool."""
    if dtype.kind not in "fiub":
        raise TypeError(
            f"{name} must be an array of real numbers; got dtype {dtype} "
            f"(complex, object, string and datetime data are not supported)"
        )


def matrix(x: Any, name: str) -> tuple[np.ndarray, np.dtype]:
    """``float_array`` of a 2-D argument."""
    arr, result = float_array(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D; got shape {arr.shape}")
    return arr, result


def at_least_1d(arr: np.ndarray, name: str) -> None:
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis); "
                         "got a 0-d array")


def normalise_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(axis, ndim)
    return axis % ndim


def n_classes(shape: tuple[int, ...], axis: int, name: str) -> int:
    c = shape[axis]
    if c == 0:
        raise ValueError(f"{name} has zero classes (shape {shape}, class axis {axis}): "
                         "at least one is needed")
    return c


def target_is_class_indices(dtype: np.dtype, shape: tuple[int, ...], input_shape: tuple[int, ...],
                            class_axis: int, ignore_index: Any) -> bool:
    """Whether a target of ``dtype`` and ``shape`` holds class indices (True) or class
    probabilities (False), by PyTorch's rule: integers of the input's shape without the class
    axis are indices, floats of the input's shape are probabilities. Any other target raises the
    error that names its problem: TypeError for the wrong dtype of a right shape, ValueError for
    a shape that fits neither kind, and ValueError for an explicit ``ignore_index`` with
    probabilities."""
    shape, input_shape = tuple(shape), tuple(input_shape)
    index_shape = input_shape[:class_axis] + input_shape[class_axis + 1:]
    if dtype.kind in "iu":
        if shape == index_shape:
            return True
        if shape == input_shape:
            raise TypeError(
                f"target has the input's shape {input_shape}, the shape of class probabilities, "
                f"but integer dtype {dtype}: class probabilities must be floating (class "
                f"indices have shape {index_shape})"
            )
        raise ValueError(
            f"target shape {shape} does not match input shape {input_shape}: class indices (an "
            f"integer target) have shape {index_shape}"
        )
    if dtype.kind == "f":
        if shape == input_shape:
            if type(ignore_index) is not _DefaultIgnoreIndex:
                raise ValueError(
                    "ignore_index is not supported with class probabilities (a floating target "
                    "of the input's shape), where every target counts: leave ignore_index out, "
                    "or give integer class indices"
                )
            return False
        if shape == index_shape:
            raise TypeError(
                f"target has the shape of class indices {index_shape} but dtype {dtype}: class "
                f"indices must be integers (target.astype(np.int64)); class probabilities have "
                f"the input's shape {input_shape}"
            )
        raise ValueError(
            f"target shape {shape} does not match input shape {input_shape}: class "
            f"probabilities (a floating target) have the input's shape"
        )
    raise TypeError(
        f"target must be integer class indices or floating class probabilities; got dtype {dtype}"
    )


def sparse_label_kind(dtype: np.dtype, shape: tuple[int, ...], expected_shape: tuple[int, ...],
                      logits_name: str, logits_shape: tuple[int, ...], name: str) -> None:
    """Class labels (of an array, or a lazy array) are integers of exactly ``expected_shape``."""
    if dtype.kind not in "iu":
        hint = " (use the dense function for probability labels)" if dtype.kind == "f" else ""
        raise TypeError(f"{name} must be integer class indices; got dtype {dtype}{hint}")
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} shape {tuple(shape)} does not match {logits_name} shape "
            f"{tuple(logits_shape)}: expected {name} of shape {tuple(expected_shape)}"
        )


def sparse_labels(labels: Any, expected_shape: tuple[int, ...], logits_name: str,
                  logits_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Integer class labels of exactly ``expected_shape``, in any integer dtype (never
    converted)."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu" or arr.shape != tuple(expected_shape):
        sparse_label_kind(arr.dtype, arr.shape, expected_shape, logits_name, logits_shape, name)
    return kernel_ready(arr)


def dense_label_kind(dtype: np.dtype, shape: tuple[int, ...], logits_shape: tuple[int, ...],
                     logits_name: str, name: str) -> None:
    """Dense labels (of an array, or a lazy array) are real numbers of the logits' shape."""
    if dtype.kind not in "fiub":
        raise TypeError(f"{name} must be an array of real numbers; got dtype {dtype}")
    if tuple(shape) != tuple(logits_shape):
        raise ValueError(
            f"{name} shape {tuple(shape)} does not match {logits_name} shape {tuple(logits_shape)}"
        )


def dense_labels(labels: Any, logits_shape: tuple[int, ...], dtype: np.dtype, logits_name: str,
                 name: str) -> np.ndarray:
    """Floating labels of the logits' shape, in the logits' kernel dtype."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "fiub" or arr.shape != tuple(logits_shape):
        dense_label_kind(arr.dtype, arr.shape, logits_shape, logits_name, name)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return kernel_ready(arr)


def class_weight(weight: Any, n_classes: int | None) -> np.ndarray | None:
    """None, or a C-contiguous float64 array of shape (C,) of finite non-negative weights
    (``n_classes=None``: any length, for a loss object that does not know C yet)."""
    if weight is None:
        return None
    arr = np.asarray(weight)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"weight must be an array of real numbers; got dtype {arr.dtype}")
    if n_classes is None:
        if arr.ndim != 1:
            raise ValueError(f"weight must have shape (C,), one per class; got shape {arr.shape}")
    else:
        weight_classes(arr, n_classes)
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("weight must be finite; got a NaN or infinite weight")
    if (arr < 0).any():
        raise ValueError(f"weight must be non-negative; got {arr[arr < 0][0]!r}")
    return arr


def weight_classes(weight: np.ndarray | None, n_classes: int) -> None:
    """A weight (as ``class_weight`` returns it, or an array being checked by it) has one
    entry per class."""
    if weight is not None and weight.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},), one per class; got shape "
                         f"{weight.shape}")


def reduction(value: Any) -> Literal["mean", "sum", "none"]:
    if not isinstance(value, str) or value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; got {value!r}")
    return cast(Literal["mean", "sum", "none"], value)  # one of REDUCTIONS


def label_smoothing(value: Any) -> float:
    if type(value) is float and 0.0 <= value <= 1.0:  # the common case, checked fast
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"label_smoothing must be a real number; got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {value!r}")
    return value


def z_loss(value: Any) -> float:
    """The z-loss coefficient: a finite real >= 0 (0 turns it off)."""
    if type(value) is float and 0.0 <= value < float("inf"):  # the common case, checked fast
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"z_loss must be a real number; got {value!r}")
    value = float(value)
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"z_loss must be finite and >= 0; got {value!r}")
    return value


def softcap(value: Any) -> float:
    """The logit softcap as the kernels take it: None -> 0.0 (no cap), else a finite real > 0."""
    if value is None:
        return 0.0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"softcap must be None or a real number; got {value!r}")
    value = float(value)
    if not 0.0 < value < float("inf"):
        raise ValueError(f"softcap must be None or finite and > 0; got {value!r}")
    return value


def ignore_index(value: Any) -> int:
    """An int64 ``ignore_index`` (IGNORE_INDEX_DEFAULT itself when it is the default)."""
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:  # the common case, checked fast
        return value
    if type(value) is _DefaultIgnoreIndex:
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"ignore_index must be an integer; got {value!r}")
    try:
        value = operator.index(value)  # int, NumPy integers, a 0-d integer tensor
    except TypeError:
        raise TypeError(f"ignore_index must be an integer; got {value!r}") from None
    if not _INT64.min <= value <= _INT64.max:
        raise ValueError(f"ignore_index must fit in int64; got {value}")
    return value


def n_threads(value: Any, max_threads: int) -> int:
    """None -> every thread OpenMP may use now; an int >= 1 -> that many."""
    if value is None:
        return max(1, max_threads)
    if type(value) is int and value >= 1:
        return min(value, 1 << 16)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"n_threads must be None or an integer; got {value!r}")
    if value < 1:
        raise ValueError(f"n_threads must be at least 1; got {value}")
    return int(min(value, 1 << 16))


def grad_output(value: Any, reduction: str,
                loss_shape: tuple[int, ...]) -> tuple[float, np.ndarray | None]:
    """(scalar factor, per-row factors or None) for d(grad_output . loss)/d input."""
    if type(value) is float and reduction != "none":  # the common case, checked fast
        return value, None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"grad_output must be real; got dtype {arr.dtype}")
    if reduction != "none" or arr.ndim == 0:
        if arr.ndim != 0:
            raise ValueError(
                f"grad_output must be a scalar for reduction={reduction!r}; got shape {arr.shape}"
            )
        return float(arr), None
    try:
        rows = np.broadcast_to(arr.astype(np.float64, copy=False), loss_shape)
    except ValueError:
        raise ValueError(
            f"grad_output shape {arr.shape} does not match the loss shape {tuple(loss_shape)}"
        ) from None
    return 1.0, rows


def chunk_size(value: Any) -> int | None:
    """None, or the rows of a chunk: an int >= 1."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"chunk_size must be None or an integer; got {value!r}")
    if value < 1:
        raise ValueError(f"chunk_size must be >= 1; got {value!r}")
    return int(value)


def linear_shapes(hidden_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> None:
    """hidden ``(N, H)`` and weight ``(V, H)``: the same H, and V >= 1."""
    if hidden_shape[1] != weight_shape[1]:
        raise ValueError(
            f"hidden shape {hidden_shape} and weight shape {weight_shape} do not match: expected "
            f"hidden (N, H) and weight (V, H) with the same H"
        )
    if weight_shape[0] == 0:
        raise ValueError(f"weight shape {weight_shape} has zero classes (V == 0)")


def linear_bias(bias: Any, weight_shape: tuple[int, ...]) -> np.ndarray | None:
    """None, or the bias of a linear layer of weight ``(V, H)``: ``(V,)`` in a kernel dtype."""
    if bias is None:
        return None
    arr, _ = float_array(bias, "bias")
    if arr.shape != (weight_shape[0],):
        raise ValueError(f"bias must have shape ({weight_shape[0]},) to match weight "
                         f"{weight_shape}; got {arr.shape}")
    return arr


def out_array(out: Any, shape: tuple[int, ...], dtype: np.dtype, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray; got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}; expected {tuple(shape)}")
    if out.dtype.newbyteorder("=") != dtype:
        raise ValueError(f"{name} has dtype {out.dtype}; expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is not writeable")
    return out


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return (a is b or (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                       and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype))


def _shared_view(value: Any) -> np.ndarray | None:
    """The array NumPy reads ``value`` as, when that may be ``value``'s own memory (an ndarray,
    or a memoryview, torch tensor or other buffer that np.asarray views without a copy); None
    for what np.asarray always copies (None, scalars, lists, tuples). The API passes the arrays
    its kernels read where it has them, so this converts only what it has not (grad_output)."""
    if isinstance(value, np.ndarray):
        return value
    if value is None or isinstance(value, (numbers.Number, str, list, tuple)):
        return None
    try:
        return np.asarray(value)
    except Exception:  # what could not be read as an array was rejected before, or is copied
        return None


def no_overlap(out: np.ndarray, inputs: dict[str, Any], in_place_ok: Any = None) -> None:
    """Raise ValueError if ``out`` shares memory with an input, except exact in-place aliasing
    of ``in_place_ok`` (the one input a kernel may overwrite element by element). Inputs that
    are not ndarrays are checked through the array that views them (a memoryview or a tensor
    shares its memory with it)."""
    for name, value in inputs.items():
        arr = _shared_view(value)
        if arr is None or not np.may_share_memory(out, arr):
            continue  # the memory bounds do not even meet: the common case, checked fast
        if value is in_place_ok and _same_memory(out, arr):
            continue
        try:
            overlaps = np.shares_memory(out, arr, max_work=1 << 20)
        except np.exceptions.TooHardError:
            overlaps = True
        if overlaps:
            raise ValueError(f"out overlaps {name}; only out={name} exactly (in place) is allowed"
                             if value is in_place_ok else f"out overlaps {name}")


def labels_in_range(labels: np.ndarray, n_classes: int, ignore_index: int | None,
                    offset: tuple[int, ...] = ()) -> None:
    """IndexError for the first label (in C order) that is neither a class nor ignore_index,
    named at its index in ``labels``, or in a whole target of which ``labels`` is the block
    starting at ``offset``."""
    flat = labels.reshape(-1)
    if flat.dtype.kind == "u":
        bad = flat >= n_classes
    else:
        bad = (flat < 0) | (flat >= n_classes)
    if ignore_index is not None:
        bad &= flat != ignore_index
    if not bad.any():
        return
    position = int(np.argmax(bad))
    where = np.unravel_index(position, labels.shape) if labels.ndim else ()
    if offset:
        where = tuple(i + o for i, o in zip(where, offset))
    value = flat[position]
    ignore = f" and is not ignore_index={ignore_index}" if ignore_index is not None else ""
    raise IndexError(
        f"label {value} at index {tuple(int(i) for i in where)} is out of range for "
        f"{n_classes} classes (valid: 0 to {n_classes - 1}){ignore}"
    ) from None
