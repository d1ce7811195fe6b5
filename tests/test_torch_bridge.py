"""fastxent.torch: a drop-in for torch.nn.functional.cross_entropy, checked against PyTorch itself.

The loss and its autograd gradient are compared with F.cross_entropy over the argument matrix on
both kernel modules; float32 at a few float32 ulps of the logits' magnitude (PyTorch computes in
float32, fastxent in double), float64 at a few float64 ulps.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: fastxent.torch untested")
F = torch.nn.functional

import fastxent._api  # noqa: E402
import fastxent.torch as fxt  # noqa: E402
from helpers import n_classes_of, rng_for, target_shape_of  # noqa: E402

SHAPES = [(7,), (12, 5), (6, 4, 3), (3, 5, 2, 4)]
REDUCTIONS = ["mean", "sum", "none"]
INT_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16,
              torch.uint32, torch.uint64]
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _loss_and_grad(loss_fn, x, target, grad_output=None, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(x, target, **kwargs)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output)
    return loss.detach(), x.grad


def _assert_matches_torch(x, target, grad_output=None, **kwargs):
    """fastxent.torch's loss and gradient equal PyTorch's (the target goes to PyTorch as int64)."""
    torch_target = target.long() if not target.is_floating_point() else target
    ours = _loss_and_grad(fxt.cross_entropy, x, target, grad_output, **kwargs)
    theirs = _loss_and_grad(F.cross_entropy, x, torch_target, grad_output, **kwargs)
    rtol = 2e-6 if x.dtype == torch.float32 else 1e-12
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        np.testing.assert_allclose(a.double().numpy(), b.double().numpy(), rtol=rtol,
                                   atol=rtol * scale)


@pytest.fixture
def kernel_calls(monkeypatch):
    """(input, target, result) of every call of fastxent's in-memory loss functions."""
    calls = []
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        original = getattr(fastxent._api, name)

        def spy(input, target, *args, _original=original, **kwargs):
            result = _original(input, target, *args, **kwargs)
            calls.append((input, target, result))
            return result
        monkeypatch.setattr(fastxent._api, name, spy)
    return calls


# ------------------------------------------------------------------------------------------
# Parity with F.cross_entropy over the argument matrix
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_class_index_targets_match_torch(backend, dtype, shape, reduction, weighted, smoothing):
    rng = rng_for(shape, reduction, weighted, smoothing)
    x = torch.from_numpy((rng.standard_normal(shape) * 3).astype(dtype))
    c = n_classes_of(shape)
    target = torch.from_numpy(rng.integers(0, c, target_shape_of(shape)))
    weight = torch.from_numpy(rng.uniform(0.1, 2.0, c).astype(dtype)) if weighted else None
    grad_output = (torch.from_numpy(rng.standard_normal(target.shape).astype(dtype))
                   if reduction == "none" else torch.tensor(0.7, dtype=x.dtype))
    _assert_matches_torch(x, target, grad_output, weight=weight, reduction=reduction,
                          label_smoothing=smoothing)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ignored_targets_match_torch(backend, dtype, shape, reduction, ignore_index, smoothing):
    rng = rng_for(shape, reduction, ignore_index, smoothing)
    x = torch.from_numpy(rng.standard_normal(shape).astype(dtype))
    target = rng.integers(0, n_classes_of(shape), target_shape_of(shape))
    target.reshape(-1)[::3] = ignore_index
    weight = torch.from_numpy(rng.uniform(0.1, 2.0, n_classes_of(shape)).astype(dtype))
    _assert_matches_torch(x, torch.from_numpy(target), weight=weight, reduction=reduction,
                          ignore_index=ignore_index, label_smoothing=smoothing)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored_matches_torch(backend, dtype, reduction):
    x = torch.from_numpy(rng_for(reduction).standard_normal((4, 3)).astype(dtype))
    target = torch.full((4,), -100)
    _assert_matches_torch(x, target, reduction=reduction)
    loss, grad = _loss_and_grad(fxt.cross_entropy, x, target, reduction=reduction)
    if reduction == "mean":
        assert torch.isnan(loss) and not grad.any()  # NaN loss, all-zero gradient, as PyTorch


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_probability_targets_match_torch(backend, dtype, shape, reduction, smoothing):
    rng = rng_for("prob", shape, reduction, smoothing)
    x = torch.from_numpy(rng.standard_normal(shape).astype(dtype))
    target = torch.from_numpy(rng.dirichlet(np.ones(n_classes_of(shape)), target_shape_of(shape))
                              .astype(dtype)).movedim(-1, 1 if len(shape) > 1 else 0)
    weight = torch.from_numpy(rng.uniform(0.1, 2.0, n_classes_of(shape)).astype(dtype))
    _assert_matches_torch(x, target, weight=weight, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("target_dtype", INT_DTYPES, ids=str)
def test_integer_target_dtypes_as_torch(backend, dtype, target_dtype):
    # PyTorch takes int64 and uint8 class indices and raises its RuntimeError for the others
    x = torch.from_numpy(rng_for(str(target_dtype)).standard_normal((9, 6)).astype(dtype))
    target = torch.arange(9).remainder(6).to(target_dtype)
    if target_dtype in (torch.int64, torch.uint8):
        _assert_matches_torch(x, target)
        return
    with pytest.raises(RuntimeError) as theirs:
        F.cross_entropy(x, target)
    with pytest.raises(RuntimeError) as ours:
        fxt.cross_entropy(x, target)
    assert str(ours.value) == str(theirs.value)


def test_out_of_range_target_raises_index_error(backend):
    with pytest.raises(IndexError, match="label 5 .* 5 classes"):
        fxt.cross_entropy(torch.zeros(3, 5), torch.tensor([0, 5, 1]))


def test_legacy_size_average_and_reduce_as_torch(backend):
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    for size_average, reduce in [(False, None), (None, False), (True, True)]:
        with pytest.warns(UserWarning):
            theirs = F.cross_entropy(x, y, size_average=size_average, reduce=reduce)
        with pytest.warns(UserWarning):
            ours = fxt.cross_entropy(x, y, size_average=size_average, reduce=reduce)
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------------------
# Autograd
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(backend, shape, reduction):
    rng = rng_for("gradcheck", shape, reduction)
    x = torch.from_numpy(rng.standard_normal(shape)).requires_grad_(True)
    c = n_classes_of(shape)
    target = torch.from_numpy(rng.integers(0, c, target_shape_of(shape)))
    weight = torch.from_numpy(rng.uniform(0.5, 2.0, c))
    assert torch.autograd.gradcheck(
        lambda a: fxt.cross_entropy(a, target, weight=weight, reduction=reduction,
                                    label_smoothing=0.1), (x,))
    probabilities = torch.from_numpy(rng.dirichlet(np.ones(c), target_shape_of(shape))) \
        .movedim(-1, 1 if len(shape) > 1 else 0)
    assert torch.autograd.gradcheck(
        lambda a: fxt.cross_entropy(a, probabilities, reduction=reduction), (x,))


def test_backward_hands_on_the_saved_gradient_without_copying(backend, kernel_calls):
    x = torch.randn(8, 5, requires_grad=True)
    fxt.cross_entropy(x, torch.arange(8) % 5).backward()
    (_, _, (_, grad)), = kernel_calls  # one fused call, nothing recomputed in backward
    assert x.grad.data_ptr() == grad.__array_interface__["data"][0]  # adopted, not copied
    _, expected = _loss_and_grad(F.cross_entropy, x, torch.arange(8) % 5)
    torch.testing.assert_close(x.grad, expected)


def test_repeated_backward_with_retain_graph_accumulates(backend):
    # The first backward hands on the saved gradient; the second must still see it unscaled.
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = fxt.cross_entropy(x, y)
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward(retain_graph=True)
    (loss * 3).backward()
    torch.testing.assert_close(x.grad, 5 * once, rtol=1e-14, atol=0)


def test_gradients_of_a_retained_graph_never_share_memory(backend):
    # torch.autograd.grad twice through one loss: two independent gradients, as F.cross_entropy
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = fxt.cross_entropy(x, torch.tensor([0, 1, 2, 1]))
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, retain_graph=True)
    assert g1.data_ptr() != g2.data_ptr()
    expected = g1.clone()
    g2.add_(1.0)
    (g3,) = torch.autograd.grad(loss, x, retain_graph=True)
    torch.testing.assert_close(g3, expected, rtol=0, atol=0)
    g1.add_(1.0)  # the first one is the saved buffer itself: autograd's version check catches it
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_loss_in_a_larger_graph(backend):
    # grad_output other than 1, and a gradient that flows on into a layer
    layer = torch.nn.Linear(4, 3).double()
    h = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    grads = []
    for loss_fn in (fxt.cross_entropy, F.cross_entropy):
        layer.zero_grad()
        (2.5 * loss_fn(layer(h), y) + layer.weight.square().sum()).backward()
        grads.append(layer.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-13, atol=1e-15)


def test_double_backward_raises_a_clear_error(backend):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = fxt.cross_entropy(x, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_no_grad_and_inference_mode_compute_the_loss_only(backend, kernel_calls):
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    expected = F.cross_entropy(x, y).detach()
    with torch.no_grad():
        loss = fxt.cross_entropy(x, y)
    assert loss.grad_fn is None and not loss.requires_grad
    with torch.inference_mode():
        loss2 = fxt.cross_entropy(x, y)
    for value in (loss, loss2, fxt.cross_entropy(x.detach(), y)):
        torch.testing.assert_close(value, expected)
    assert len(kernel_calls) == 3
    assert all(not isinstance(result, tuple) for _, _, result in kernel_calls)  # no gradient


def test_torch_compile_traces_without_graph_break(backend):
    compiled = torch.compile(lambda a, b: fxt.cross_entropy(a, b, label_smoothing=0.1) * 2,
                             fullgraph=True, backend="aot_eager")
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    loss = compiled(x, y)
    loss.backward()
    expected_loss, expected_grad = _loss_and_grad(
        lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1) * 2, x, y)
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-13, atol=0)
    torch.testing.assert_close(x.grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
def test_fake_kernel_matches_the_kernel_for_strided_input(backend, layout):
    # torch.compile trusts the fake kernel's strides: the gradient is C-contiguous whatever the
    # input's (empty_like kept a transposed input's strides, and inductor's check failed)
    if layout == "transposed":
        x, y = torch.randn(5, 8, dtype=torch.float64).t(), torch.randint(0, 5, (8,))
    else:
        x = torch.randn(2, 3, 4, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
        y = torch.randint(0, 3, (2, 4, 5))
    for reduction in ("mean", "none"):
        torch.library.opcheck(torch.ops.fastxent.cross_entropy.default,
                              (x, y, None, -100, reduction, 0.0, True),
                              test_utils=("test_schema", "test_faketensor"))


def test_ignore_index_is_checked_as_torch_does(backend):
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="ignore_index"):
        fxt.cross_entropy(x, torch.tensor([0, 1, 2]), ignore_index=1.5)
    with pytest.raises(ValueError, match="ignore_index"):
        fxt.cross_entropy(x, torch.tensor([0, 1, 2]), ignore_index=2**64)
    y = torch.tensor([0, 1, 2])
    torch.testing.assert_close(fxt.cross_entropy(x, y, ignore_index=torch.tensor(1)),
                               F.cross_entropy(x, y, ignore_index=torch.tensor(1)))
    probabilities = torch.softmax(torch.randn(3, 4, dtype=torch.float64), 1)
    for fn in (fxt.cross_entropy, F.cross_entropy):
        for ignore_index in (0, 1):
            with pytest.raises(RuntimeError, match="ignore_index is not supported for floating"):
                fn(x, probabilities, ignore_index=ignore_index)
    for ignore_index in (-1, -5):  # a negative one is accepted with probabilities, and unused
        torch.testing.assert_close(fxt.cross_entropy(x, probabilities, ignore_index=ignore_index),
                                   F.cross_entropy(x, probabilities, ignore_index=ignore_index))


# ------------------------------------------------------------------------------------------
# Memory: views, not copies; and what goes to PyTorch instead
# ------------------------------------------------------------------------------------------

def test_strided_tensors_are_viewed_not_copied(backend, kernel_calls):
    base = torch.randn(10, 6, 4, dtype=torch.float64)
    x = base[::2, :, 1:3].movedim(2, 1).movedim(1, 2)  # non-contiguous, offset view
    y = torch.tensor([0, 1, 2, 3, 0])[:, None].expand(5, 2)  # zero stride
    x.requires_grad_(True)
    _assert_matches_torch(x.detach(), y)
    kernel_calls.clear()
    fxt.cross_entropy(x, y).backward()
    (x_seen, y_seen, _), = kernel_calls
    assert x_seen.__array_interface__["data"][0] == x.data_ptr()
    assert x_seen.strides == tuple(s * 8 for s in x.stride())
    assert y_seen.strides == tuple(s * 8 for s in y.stride())


@pytest.mark.parametrize("dtype_", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_goes_to_torch(backend, kernel_calls, dtype_):
    x = torch.randn(6, 4).to(dtype_).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ours = _loss_and_grad(fxt.cross_entropy, x, y)
    theirs = _loss_and_grad(F.cross_entropy, x, y)
    assert not kernel_calls
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_other_devices_go_to_torch(backend, kernel_calls):
    # the meta device stands in for CUDA and friends: PyTorch computes shapes, we never touch data
    x = torch.empty(6, 4, device="meta", requires_grad=True)
    loss = fxt.cross_entropy(x, torch.zeros(6, dtype=torch.long, device="meta"), reduction="none")
    assert loss.device.type == "meta" and loss.shape == (6,) and not kernel_calls
    if torch.cuda.is_available():
        xc = torch.randn(6, 4, device="cuda", requires_grad=True)
        yc = torch.zeros(6, dtype=torch.long, device="cuda")
        torch.testing.assert_close(fxt.cross_entropy(xc, yc), F.cross_entropy(xc, yc))


def test_differentiable_probability_target_or_weight_goes_to_torch(backend, kernel_calls):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(5, 3, dtype=torch.float64), 1).requires_grad_(True)
    fxt.cross_entropy(x, t).backward()
    grad_t = t.grad.clone()
    t.grad = None
    F.cross_entropy(x, t).backward()
    torch.testing.assert_close(grad_t, t.grad)
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    fxt.cross_entropy(x, t.detach(), weight=w).backward()  # weights of probability targets
    assert w.grad is not None and not kernel_calls
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        fxt.cross_entropy(x, torch.tensor([0, 1, 2, 0, 1]), weight=w)  # as PyTorch


# ------------------------------------------------------------------------------------------
# The module, and training
# ------------------------------------------------------------------------------------------

def test_cross_entropy_loss_module_is_a_drop_in(backend):
    weight = torch.tensor([1.0, 2.0, 0.5])
    ours = fxt.CrossEntropyLoss(weight=weight, ignore_index=1, reduction="sum", label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=1, reduction="sum",
                                       label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.testing.assert_close(ours(x, y), theirs(x, y))
    assert "CrossEntropyLoss" in repr(ours)


def _train_digits(loss_fn, dtype, steps):
    """Full-batch SGD with momentum on scikit-learn's bundled digits; the loss of every step."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=dtype)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 10)).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("dtype_", [torch.float32, torch.float64], ids=str)
def test_digits_training_gives_the_same_loss_curve(backend, dtype_):
    ours = _train_digits(fxt.CrossEntropyLoss(), dtype_, steps=60)
    theirs = _train_digits(torch.nn.CrossEntropyLoss(), dtype_, steps=60)
    assert theirs[-1] < 0.25 * theirs[0]  # it did learn
    # float rounding of the loss, grown a little by 60 steps of training on it
    rtol = 1e-4 if dtype_ == torch.float32 else 1e-11
    np.testing.assert_allclose(ours, theirs, rtol=rtol)
