"""PyTorch's and TensorFlow's own test cases, run against fastxent.

PyTorch: the OpInfo samples of ``nn.functional.cross_entropy`` and the ModuleInfo inputs and
error inputs of ``nn.CrossEntropyLoss`` (``torch.testing._internal``, which ships with torch and
needs ``expecttest``), through ``fastxent.torch`` (PyTorch's values, gradients and exception
types) and through the NumPy API (PyTorch's values; NumPy-style exceptions whose messages name
the real problem). TensorFlow: the float64 cases of its kernel tests for
``softmax_cross_entropy_with_logits`` (``xent_op_test_base.py``), with their tolerances.
Both kernel modules, both float dtypes.
"""

import numpy as np
import pytest

import fastxent

torch = pytest.importorskip("torch", reason="PyTorch is not installed: conformance untested")
pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
F = torch.nn.functional
from torch.testing._internal import common_methods_invocations, common_modules  # noqa: E402

import fastxent.torch as fxt  # noqa: E402
import reference  # noqa: E402

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
# fastxent rejects what PyTorch computes in these cases (docs/coming-from.md, "Where fastxent
# differs")
NEGATIVE_WEIGHT = "weight must be non-negative"


def _op_samples(dtype):
    (op,) = [o for o in common_methods_invocations.op_db
             if o.name == "nn.functional.cross_entropy" and not o.variant_test_name]
    return list(op.sample_inputs("cpu", TORCH_DTYPE[dtype], requires_grad=True))


def _module_info():
    (info,) = [m for m in common_modules.module_db if m.name == "nn.CrossEntropyLoss"]
    return info


def _numpy_kwargs(kwargs):
    return {k: v.detach().numpy() if torch.is_tensor(v) else v for k, v in kwargs.items()}


def _loss_and_grad(fn, x, target, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, target, **kwargs)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad


def _assert_close(ours, theirs, dtype):
    rtol = 4e-6 if dtype == np.float32 else 1e-12  # PyTorch's float32 is the less exact
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    scale = max(1.0, float(np.abs(theirs).max())) if theirs.size else 1.0
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale)


def _has_negative_weight(kwargs):
    weight = kwargs.get("weight")
    return weight is not None and bool((weight < 0).any())


# ------------------------------------------------------------------------------------------
# PyTorch: OpInfo samples of nn.functional.cross_entropy
# ------------------------------------------------------------------------------------------

def test_opinfo_samples_through_fastxent_torch(backend, dtype):
    for sample in _op_samples(dtype):
        # a weight or a probability target that requires grad is PyTorch's to compute
        x, target, kwargs = sample.input, sample.args[0].detach(), dict(sample.kwargs)
        if "weight" in kwargs:
            kwargs["weight"] = kwargs["weight"].detach()
        if _has_negative_weight(kwargs):
            with pytest.raises(ValueError, match=NEGATIVE_WEIGHT):
                fxt.cross_entropy(x, target, **kwargs)
            kwargs["weight"] = kwargs["weight"].abs()  # and the values with weights it takes
        ours = _loss_and_grad(fxt.cross_entropy, x, target, **kwargs)
        theirs = _loss_and_grad(F.cross_entropy, x, target, **kwargs)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and a.shape == b.shape
            _assert_close(a, b, dtype)


def test_opinfo_samples_through_the_numpy_api(backend, dtype):
    for sample in _op_samples(dtype):
        x, target, kwargs = sample.input.detach(), sample.args[0].detach(), dict(sample.kwargs)
        if "weight" in kwargs:
            kwargs["weight"] = kwargs["weight"].detach()
        if _has_negative_weight(kwargs):
            with pytest.raises(ValueError, match=NEGATIVE_WEIGHT):
                fastxent.cross_entropy(x.numpy(), target.numpy(), **_numpy_kwargs(kwargs))
            kwargs["weight"] = kwargs["weight"].abs()
        expected = F.cross_entropy(x, target, **kwargs)
        loss, grad = fastxent.cross_entropy_with_grad(x.numpy(), target.numpy(),
                                                      **_numpy_kwargs(kwargs))
        assert loss.dtype == dtype and np.shape(loss) == tuple(expected.shape)
        _assert_close(loss, expected.numpy(), dtype)
        x_grad = x.clone().requires_grad_(True)
        F.cross_entropy(x_grad, target, **kwargs).sum().backward()
        _assert_close(grad, x_grad.grad.numpy(), dtype)


# ------------------------------------------------------------------------------------------
# PyTorch: ModuleInfo inputs and error inputs of nn.CrossEntropyLoss
# ------------------------------------------------------------------------------------------

def test_moduleinfo_inputs_through_both_modules(backend, dtype):
    info = _module_info()
    module_inputs = info.module_inputs_func(info, "cpu", TORCH_DTYPE[dtype], True, training=True)
    assert module_inputs
    for module_input in module_inputs:
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        x, target = (t.detach() for t in module_input.forward_input.args)
        if _has_negative_weight(kwargs):
            with pytest.raises(ValueError, match=NEGATIVE_WEIGHT):
                fxt.CrossEntropyLoss(*args, **kwargs)(x, target)
            with pytest.raises(ValueError, match=NEGATIVE_WEIGHT):
                fastxent.CrossEntropyLoss(*args, **_numpy_kwargs(kwargs))
            kwargs = {**kwargs, "weight": kwargs["weight"].abs()}
        theirs = _loss_and_grad(torch.nn.CrossEntropyLoss(*args, **kwargs), x, target)
        ours = _loss_and_grad(fxt.CrossEntropyLoss(*args, **kwargs), x, target)
        for a, b in zip(ours, theirs):
            _assert_close(a, b, dtype)
        numpy_module = fastxent.CrossEntropyLoss(*args, **_numpy_kwargs(kwargs))
        loss, grad = numpy_module.with_grad(x.detach().numpy(), target.numpy(),
                                            np.ones(theirs[0].shape))
        _assert_close(loss, theirs[0].numpy(), dtype)
        _assert_close(grad, theirs[1].numpy(), dtype)


# PyTorch's error (its regex) -> the NumPy API's exception and the words that name the problem
NUMPY_ERRORS = {
    "Expected floating point type for target with class probabilities":
        (TypeError, r"integer dtype int64: class probabilities must be floating"),
    "expected target dtype to be Long or Byte":
        (TypeError, r"class indices must be integers"),
    "Expected input batch_size .* to match target batch_size":
        (ValueError, r"target shape \(3,\) does not match input shape \(2, 3\)"),
    "weight tensor should be defined either for all .* classes or no classes":
        (ValueError, r"weight must have shape \(3,\), one per class"),
    "ignore_index is not supported for floating point target":
        (ValueError, r"ignore_index is not supported with class probabilities"),
    "label_smoothing must be between 0.0 and 1.0":
        (ValueError, r"label_smoothing must be in \[0, 1\]"),
    "Expected target size":
        (ValueError, r"target shape \(2, 4\) does not match input shape \(2, 3, 5\): class "
                     r"indices \(an integer target\) have shape \(2, 5\)"),
}


def _error_inputs(dtype):
    info = _module_info()
    return info.module_error_inputs_func(info, "cpu", TORCH_DTYPE[dtype], False, training=True)


def test_moduleinfo_error_inputs_raise_pytorchs_errors(backend, dtype):
    error_inputs = _error_inputs(dtype)
    assert len(error_inputs) >= 7
    for error_input in error_inputs:
        constructor, forward = (error_input.module_error_input.constructor_input,
                                error_input.module_error_input.forward_input)
        loss_fn = fxt.CrossEntropyLoss(*constructor.args, **constructor.kwargs)
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            loss_fn(*forward.args, **forward.kwargs)


def test_moduleinfo_error_inputs_name_the_problem_in_the_numpy_api(backend, dtype):
    for error_input in _error_inputs(dtype):
        constructor, forward = (error_input.module_error_input.constructor_input,
                                error_input.module_error_input.forward_input)
        exception, words = NUMPY_ERRORS[error_input.error_regex]
        x, target = (t.detach().numpy() for t in forward.args)
        with pytest.raises(exception, match=words):
            fastxent.cross_entropy(x, target, **_numpy_kwargs(constructor.kwargs))


# Calls PyTorch rejects beyond the ModuleInfo error inputs: fastxent.torch raises the same type
# with PyTorch's own message (they are PyTorch's to compute), except the documented differences.
def _error_cases():
    x = torch.randn(2, 3)
    yield "int32 target", (x, torch.tensor([0, 1], dtype=torch.int32)), {}
    yield "bool target", (x, torch.tensor([True, False])), {}
    yield "weight of another dtype", (x, torch.tensor([0, 1])), {"weight": torch.ones(3).double()}
    yield "integer weight", (x, torch.tensor([0, 1])), {"weight": torch.ones(3, dtype=torch.long)}
    yield "2-d weight", (x, torch.tensor([0, 1])), {"weight": torch.ones(1, 3)}
    yield "0-d input", (torch.tensor(1.0), torch.tensor(0)), {}
    yield "no classes", (torch.randn(2, 0), torch.tensor([0, 0])), {}
    yield "2-d target for (N, C)", (x, torch.zeros(2, 1, dtype=torch.long)), {}
    yield "1-d target for (N, C, d)", (torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long)), {}
    yield "label_smoothing inf", (x, torch.tensor([0, 1])), {"label_smoothing": float("inf")}
    yield "reduction", (x, torch.tensor([0, 1])), {"reduction": "avg"}
    yield "reduction None", (x, torch.tensor([0, 1])), {"reduction": None}
    yield "ignore_index beyond int64", (x, torch.tensor([0, 1])), {"ignore_index": 2**63}
    yield "label_smoothing None", (x, torch.tensor([0, 1])), {"label_smoothing": None}
    yield "list target", (x, [0, 1]), {}
    yield "list weight", (x, torch.tensor([0, 1])), {"weight": [1.0, 1.0, 1.0]}
    yield "float ignore_index", (x, torch.tensor([0, 1])), {"ignore_index": 1.0}
    yield "label out of range", (x, torch.tensor([0, 3])), {}
    yield "negative label", (x, torch.tensor([0, -1])), {}
    yield "bfloat16 probabilities", (x, torch.softmax(x, 1).bfloat16()), {"ignore_index": 0}


@pytest.mark.parametrize("case", list(_error_cases()), ids=lambda case: case[0])
def test_fastxent_torch_raises_what_pytorch_raises(backend, case):
    _, args, kwargs = case
    with pytest.raises(Exception) as theirs:
        F.cross_entropy(*args, **kwargs)
    with pytest.raises(Exception) as ours:
        fxt.cross_entropy(*args, **kwargs)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)


def test_calls_pytorch_reads_by_a_rule_of_its_own_give_pytorchs_value(backend):
    # a (1,) target for a (C,) input, and int64 probabilities of another float dtype
    x = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(fxt.cross_entropy(x, torch.tensor([1])),
                               F.cross_entropy(x, torch.tensor([1])))
    x = torch.randn(2, 3)
    p = torch.softmax(torch.randn(2, 3), 1)
    for target in (p.half(), p.double(), p.bfloat16()):
        torch.testing.assert_close(fxt.cross_entropy(x, target), F.cross_entropy(x, target))
    # a bool label_smoothing is 0 or 1 to PyTorch
    y = torch.tensor([0, 2])
    torch.testing.assert_close(fxt.cross_entropy(x, y, label_smoothing=True),
                               F.cross_entropy(x, y, label_smoothing=True))


@pytest.mark.parametrize("kwargs", [{"weight": torch.tensor([1.0, -1.0, 1.0])},
                                    {"weight": torch.tensor([1.0, float("nan"), 1.0])},
                                    {"weight": torch.tensor([1.0, float("inf"), 1.0])},
                                    {"label_smoothing": -0.1},
                                    {"label_smoothing": float("nan")}], ids=str)
def test_what_fastxent_torch_rejects_on_purpose(backend, kwargs):
    # PyTorch computes these (NaN losses, or a smoothing it reads as 0 for class indices)
    x, target = torch.randn(2, 3), torch.tensor([0, 1])
    F.cross_entropy(x, target, **kwargs)
    with pytest.raises(ValueError, match="weight must be|label_smoothing must be"):
        fxt.cross_entropy(x, target, **kwargs)


# ------------------------------------------------------------------------------------------
# The NumPy API: messages that name the real problem
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    ("integer target of the input's shape", np.zeros((2, 3), np.int64), (2, 3),
     TypeError, r"input's shape \(2, 3\).*integer dtype int64: class probabilities must be "
                r"floating \(class indices have shape \(2,\)\)"),
    ("float target of the indices' shape", np.zeros(2, np.float32), (2, 3),
     TypeError, r"shape of class indices \(2,\) but dtype float32: class indices must be "
                r"integers"),
    ("float target of a (C,) input's index shape", np.float64(1.0), (3,),
     TypeError, r"shape of class indices \(\) but dtype float64"),
    ("integer target of neither shape", np.zeros(3, np.int64), (2, 3),
     ValueError, r"target shape \(3,\) does not match input shape \(2, 3\): class indices"),
    ("float target of neither shape", np.zeros((3, 3)), (2, 3),
     ValueError, r"target shape \(3, 3\) does not match input shape \(2, 3\): class "
                 r"probabilities"),
    ("bool target", np.zeros(2, bool), (2, 3),
     TypeError, r"integer class indices or floating class probabilities; got dtype bool"),
], ids=lambda case: case[0] if isinstance(case, tuple) else None)
def test_numpy_api_names_the_problem_of_a_target(backend, case):
    _, target, shape, exception, words = case
    x = np.zeros(shape)
    for call in (fastxent.cross_entropy, fastxent.cross_entropy_with_grad,
                 fastxent.CrossEntropyLoss()):
        with pytest.raises(exception, match=words):
            call(x, target)


def test_the_dtype_message_does_not_speak_of_shapes(backend):
    with pytest.raises(TypeError) as info:
        fastxent.cross_entropy(np.zeros((2, 3)), np.zeros((2, 3), np.int64))
    assert "does not match" not in str(info.value)


# ------------------------------------------------------------------------------------------
# TensorFlow: float64 cases of xent_op_test_base.py (gradient = softmax - labels for labels
# that sum to 1; fastxent's is (sum labels) softmax - labels, the same there)
# ------------------------------------------------------------------------------------------

def test_tensorflow_preserves_multi_class_tail_gradient(backend):
    logits = np.zeros((3, 10))
    logits[0, 0] = 40.0
    logits[1, 9] = 40.0
    logits[2, 4] = 3.0  # confident, but its denominator does not round to one
    labels = np.zeros_like(logits)
    labels[np.arange(3), [0, 9, 4]] = 1.0
    _, gradient = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, logits)
    expected = reference.rows(logits, labels).grad  # -9 e^-40 / s at the two 40s
    np.testing.assert_allclose(gradient, expected, rtol=1e-13, atol=1e-15)
    assert gradient[0, 0] < 0.0 and gradient[1, 9] < 0.0
    np.testing.assert_allclose(gradient.sum(axis=-1), np.zeros(3), atol=1e-15)


def test_tensorflow_preserves_soft_labels_and_positive_zero(backend):
    logits = np.array([[37.42994775023705, 0.0]])
    _, gradient = fastxent.softmax_cross_entropy_with_logits_and_grad([[0.5, 0.5]], logits)
    assert gradient[0, 0] < 0.5
    assert gradient.tolist() == [[0.49999999999999994, -0.49999999999999994]]  # exact values
    np.testing.assert_allclose(gradient.sum(axis=-1), [0.0], atol=1e-15)
    _, single = fastxent.softmax_cross_entropy_with_logits_and_grad([[1.0]], [[0.0]])
    assert single[0, 0] == 0.0 and not np.signbit(single[0, 0])


@pytest.mark.parametrize("n_classes", [2, 40])  # the tile path and the row path
@pytest.mark.parametrize("layout", ["C", "F"])
def test_dense_maximum_entry_keeps_its_last_digit(backend, n_classes, layout):
    # soft labels on a row maximum whose probability is within an ulp of 1: the exact entry
    # P p_m - t_m (long double) to half an ulp
    rng = np.random.default_rng(n_classes)
    rows = 64
    logits = np.full((rows, n_classes), -800.0)
    logits[:, 0] = rng.uniform(36.0, 40.0, rows)
    logits[:, 1] = 0.0
    labels = np.zeros((rows, n_classes))
    labels[:, 0] = rng.uniform(0.05, 0.95, rows)
    labels[:, 1] = 1.0 - labels[:, 0]
    if layout == "F":
        logits, labels = np.asfortranarray(logits), np.asfortranarray(labels)
    _, gradient = fastxent.softmax_cross_entropy_with_logits_and_grad(labels, logits)
    exact = reference.rows(logits, labels).grad
    error = np.abs(gradient - exact) / np.spacing(np.abs(exact.astype(np.float64)))
    assert error[:, :2].max() <= 0.5 + 1e-3, error[:, :2].max()


# ------------------------------------------------------------------------------------------
# float64 losses on rows built to be hard: the label at the maximum, losses between 1e-3 and
# 1, rivals just below the maximum. The loss is about s_rest there, and may lie in the binade
# below it (an ulp of s_rest is two of the loss): the bound is 4 ulp, these stay within 3.
# ------------------------------------------------------------------------------------------

def _hard_rows(n_classes, rows, rng):
    y = rng.integers(0, n_classes, rows)
    top = rng.standard_normal(rows) * 4.0
    spread = np.log(n_classes)  # the other classes add up to about e^-4 of the maximum
    x = top[:, None] - rng.uniform(4.0 + spread, 12.0 + spread, (rows, n_classes))
    x[np.arange(rows), y] = top
    for j in range(min(n_classes - 1, 3)):  # rivals just below the maximum
        x[np.arange(rows), (y + 1 + j) % n_classes] = top - rng.uniform(0.5, 7.0, rows)
    return x, y


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="long double is double here")
@pytest.mark.parametrize("n_classes", [2, 3, 10, 31, 33, 100, 1000])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_float64_losses_of_hard_rows_within_3_ulp(backend, n_classes, layout):
    x, y = _hard_rows(n_classes, max(200, 60000 // n_classes), np.random.default_rng(n_classes))
    if layout == "F":
        x = np.asfortranarray(x)
    losses = fastxent.cross_entropy(x, y, reduction="none")
    exact = reference.rows(x, y).loss
    chosen = (exact > 1e-3) & (exact < 1.0)
    assert chosen.sum() > 100
    spacing = np.spacing(exact[chosen].astype(np.float64)).astype(np.longdouble)
    errors = np.abs(losses[chosen].astype(np.longdouble) - exact[chosen]) / spacing
    assert errors.max() <= 3.0, f"{errors.max():.2f} ulp"


def test_float64_loss_of_the_row_that_was_4_ulp_off(backend):
    x = np.array([[-0.6514932254321918, -1.8877156122605494, -0.3943067716527492,
                   3.716537982299311, -3.634956607383662, -1.126477582486057,
                   -2.1250539652936826, -3.1923514820768704, -5.500533935160398,
                   6.504537963678042]])
    loss = fastxent.cross_entropy(x, [9], reduction="none")
    # 0.0623463136417265034... (200-bit reference): 0.19 ulp below it
    assert loss.tolist() == [0.062346313641726506]
