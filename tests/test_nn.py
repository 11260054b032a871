"""jitgrad.nn: Parameter, Module, layers, losses, functional (against torch where
installed), state_dict, and a short training run on scikit-learn's digits."""
import copy
import math
import warnings

import numpy as np
import pytest

import jitgrad
from jitgrad import nn
from jitgrad.nn import functional as F


def _np(t):
    return t.detach().numpy()


def _both(array, requires_grad=True):
    """The same float64 data as a jitgrad leaf and a torch leaf."""
    torch = pytest.importorskip("torch")
    array = np.asarray(array, dtype=np.float64)
    return (jitgrad.tensor(array, requires_grad=requires_grad),
            torch.tensor(array, requires_grad=requires_grad))


def _copy_weights(ours: nn.Module, theirs) -> None:
    """Give ``ours`` the parameters of the torch module ``theirs`` (same names)."""
    state = {k: jitgrad.tensor(v.detach().numpy()) for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)


def _assert_close(ours, theirs, tol=1e-12):
    np.testing.assert_allclose(_np(ours), theirs.detach().numpy(), rtol=tol, atol=tol)


# -- Parameter ---------------------------------------------------------------------------------
def test_parameter_is_a_leaf_tensor_printed_as_torch():
    torch = pytest.importorskip("torch")
    p = nn.Parameter(jitgrad.tensor([1.0, 2.0]))
    assert isinstance(p, nn.Parameter) and isinstance(p, jitgrad.Tensor)
    assert p.is_leaf and p.requires_grad and p.grad_fn is None
    assert repr(p) == repr(torch.nn.Parameter(torch.tensor([1.0, 2.0])))
    assert str(p).startswith("Parameter containing:\ntensor([1., 2.], requires_grad=True)")
    assert not nn.Parameter(jitgrad.ones(2), requires_grad=False).requires_grad


def test_parameter_shares_memory_with_its_data():
    data = jitgrad.zeros(3)
    p = nn.Parameter(data)
    with jitgrad.no_grad():
        p.add_(1.0)
    assert data.tolist() == [1.0, 1.0, 1.0]


def test_parameter_refuses_integer_data_and_non_tensors():
    with pytest.raises(RuntimeError, match="floating point"):
        nn.Parameter(jitgrad.tensor([1, 2]))
    with pytest.raises(TypeError):
        nn.Parameter([1.0, 2.0])


def test_parameter_gets_gradients():
    p = nn.Parameter(jitgrad.tensor([3.0]))
    (p * p).sum().backward()
    assert p.grad.tolist() == [6.0]


# -- Module --------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self, lib):
        super().__init__()
        self.body = lib.nn.Sequential(lib.nn.Linear(4, 8), lib.nn.Tanh(), lib.nn.Linear(8, 3))
        self.scale = lib.nn.Parameter(lib.ones(3))
        self.register_buffer("offset", lib.zeros(3))
        self.register_buffer("scratch", lib.zeros(1), persistent=False)

    def forward(self, x):
        return self.body(x) * self.scale + self.offset


def _torch_net():
    torch = pytest.importorskip("torch")

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                            torch.nn.Linear(8, 3))
            self.scale = torch.nn.Parameter(torch.ones(3))
            self.register_buffer("offset", torch.zeros(3))
            self.register_buffer("scratch", torch.zeros(1), persistent=False)

        def forward(self, x):
            return self.body(x) * self.scale + self.offset

    return TorchNet()


def test_registration_and_traversal_match_torch():
    theirs = _torch_net()
    ours = _Net(jitgrad)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [type(m).__name__ for m in ours.children()] == ["Sequential"]
    assert len(list(ours.modules())) == 5
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(isinstance(p, nn.Parameter) for p in ours.parameters())
    assert ours.get_submodule("body.2") is ours.body[2]


def test_repr_matches_torch():
    torch = pytest.importorskip("torch")
    ours = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Softmax(dim=1), nn.Dropout(),
                         nn.Flatten(), nn.Embedding(10, 3, padding_idx=0), nn.Identity(),
                         nn.LogSoftmax(1), nn.Sigmoid(), nn.Tanh(), nn.CrossEntropyLoss(),
                         nn.Sequential(nn.Linear(3, 1, bias=False), nn.ReLU(inplace=True)))
    theirs = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Softmax(dim=1), torch.nn.Dropout(),
        torch.nn.Flatten(), torch.nn.Embedding(10, 3, padding_idx=0), torch.nn.Identity(),
        torch.nn.LogSoftmax(1), torch.nn.Sigmoid(), torch.nn.Tanh(),
        torch.nn.CrossEntropyLoss(),
        torch.nn.Sequential(torch.nn.Linear(3, 1, bias=False), torch.nn.ReLU(inplace=True)))
    assert repr(ours) == repr(theirs)
    assert repr(_Net(jitgrad)) == repr(_torch_net()).replace("TorchNet", "_Net")


def test_attribute_assignment_rules():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"cannot assign 'torch.FloatTensor' as parameter "
                                        r"'weight' \(torch.nn.Parameter or None expected\)"):
        m.weight = jitgrad.zeros(2, 2)
    m.bias = None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    m.extra = nn.Parameter(jitgrad.zeros(1))
    assert [n for n, _ in m.named_parameters()] == ["weight", "extra"]
    del m.extra
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    m.plain = jitgrad.zeros(1)  # a plain tensor is just an attribute
    assert "plain" not in m.state_dict()
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'nope'"):
        _ = m.nope
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("weight", jitgrad.zeros(1))
    with pytest.raises(KeyError, match="contain"):
        m.register_buffer("a.b", jitgrad.zeros(1))

    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(jitgrad.zeros(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_forward_missing():
    with pytest.raises(NotImplementedError, match='missing the required "forward"'):
        nn.Module()(1)


def test_shared_parameters_listed_once():
    layer = nn.Linear(2, 2)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    assert len(list(model.parameters())) == 2
    assert len(list(model.modules())) == 3
    # state_dict keeps both names, as torch's
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    model.load_state_dict(model.state_dict())


def test_train_eval_propagate():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout()))
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="boolean"):
        model.train("yes")


def test_zero_grad_and_requires_grad():
    model = nn.Linear(3, 2)
    model(jitgrad.ones(1, 3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=False)
    assert all(p.grad.tolist() == np.zeros(tuple(p.shape)).tolist()
               for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())


def test_to_dtype_keeps_parameter_identity():
    model = _Net(jitgrad)
    params = list(model.parameters())
    model(jitgrad.ones(2, 4)).sum().backward()
    assert model.double() is model
    assert all(p is q for p, q in zip(params, model.parameters(), strict=True))
    assert all(p.dtype is jitgrad.float64 and p.grad.dtype is jitgrad.float64
               for p in model.parameters())
    assert model.offset.dtype is jitgrad.float64
    out = model(jitgrad.ones(2, 4, dtype=jitgrad.float64))
    assert out.dtype is jitgrad.float64
    model.to(jitgrad.float32)
    assert all(p.dtype is jitgrad.float32 for p in model.parameters())
    assert model.float() is model and model.cpu() is model
    with pytest.raises(RuntimeError, match="CPU only"):
        model.to("cuda")


# -- state_dict --------------------------------------------------------------------------------
def test_state_dict_round_trip():
    jitgrad.manual_seed(1)
    source = _Net(jitgrad)
    with jitgrad.no_grad():
        source.offset.copy_(jitgrad.tensor([1.0, 2.0, 3.0]))
    target = _Net(jitgrad)
    x = jitgrad.randn(5, 4)
    assert not jitgrad.allclose(source(x), target(x))
    result = target.load_state_dict(source.state_dict())
    assert repr(result) == "<All keys matched successfully>"
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(_np(source(x)), _np(target(x)))
    # values are detached views of the module's memory, as torch's
    state = source.state_dict()
    assert not state["scale"].requires_grad
    with jitgrad.no_grad():
        source.scale.mul_(2.0)
    assert state["scale"].tolist() == [2.0, 2.0, 2.0]
    assert source.state_dict(keep_vars=True)["scale"] is source.scale


def test_state_dict_from_torch_gives_torch_outputs():
    torch = pytest.importorskip("torch")
    theirs = _torch_net().double()
    ours = _Net(jitgrad).double()
    _copy_weights(ours, theirs)
    x = np.random.default_rng(0).standard_normal((5, 4))
    _assert_close(ours(jitgrad.tensor(x)), theirs(torch.tensor(x)))


def test_load_state_dict_errors_match_torch_and_change_nothing():
    torch = pytest.importorskip("torch")
    bad = {"weight": np.zeros((2, 3), np.float32), "foo": np.zeros(1, np.float32)}
    theirs = torch.nn.Linear(2, 3)
    with pytest.raises(RuntimeError) as expected:
        theirs.load_state_dict({k: torch.tensor(v) for k, v in bad.items()})
    ours = nn.Linear(2, 3)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(RuntimeError) as got:
        ours.load_state_dict({k: jitgrad.tensor(v) for k, v in bad.items()})
    assert str(got.value) == str(expected.value)
    assert all(jitgrad.equal(before[k], v) for k, v in ours.state_dict().items())
    # a shape mismatch alone, also with strict=False
    with pytest.raises(RuntimeError, match=r"size mismatch for bias: copying a param with "
                                           r"shape torch.Size\(\[4\]\) from checkpoint, the "
                                           r"shape in current model is torch.Size\(\[3\]\)"):
        ours.load_state_dict({"weight": jitgrad.zeros(3, 2), "bias": jitgrad.zeros(4)},
                             strict=False)
    assert all(jitgrad.equal(before[k], v) for k, v in ours.state_dict().items())


def test_load_state_dict_not_strict_and_assign():
    ours = nn.Linear(2, 3)
    result = ours.load_state_dict({"weight": jitgrad.ones(3, 2), "other": jitgrad.ones(1)},
                                  strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["other"]
    assert ours.weight.tolist() == [[1.0, 1.0]] * 3
    new_bias = jitgrad.zeros(3, dtype=jitgrad.float64)
    ours.load_state_dict({"weight": jitgrad.ones(3, 2), "bias": new_bias}, assign=True)
    assert isinstance(ours.bias, nn.Parameter) and ours.bias.dtype is jitgrad.float64
    assert ours.bias.requires_grad
    with pytest.raises(TypeError, match="dict-like"):
        ours.load_state_dict([1, 2])


def test_deepcopy_of_a_model():
    model = nn.Linear(2, 2)
    clone = copy.deepcopy(model)
    with jitgrad.no_grad():
        model.weight.add_(1.0)
    assert not jitgrad.equal(model.weight, clone.weight)
    assert isinstance(clone.weight, nn.Parameter)


# -- layers ------------------------------------------------------------------------------------
def test_linear_init_follows_torch_and_manual_seed():
    jitgrad.manual_seed(0)
    a = nn.Linear(100, 50)
    jitgrad.manual_seed(0)
    b = nn.Linear(100, 50)
    assert jitgrad.equal(a.weight, b.weight) and jitgrad.equal(a.bias, b.bias)
    bound = 1 / math.sqrt(100)
    for p in (a.weight, a.bias):
        values = _np(p)
        assert values.min() >= -bound and values.max() <= bound
        assert values.min() < -0.8 * bound and values.max() > 0.8 * bound  # fills the range
    assert a.weight.shape == (50, 100) and a.weight.dtype is jitgrad.float32
    assert nn.Linear(3, 2, dtype=jitgrad.float64).weight.dtype is jitgrad.float64
    assert nn.Linear(3, 2, bias=False).bias is None


@pytest.mark.parametrize("shape", [(5, 4), (4,), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(shape, bias):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Linear(4, 3, bias=bias).double()
    ours = nn.Linear(4, 3, bias=bias).double()
    _copy_weights(ours, theirs)
    x, tx = _both(np.random.default_rng(0).standard_normal(shape))
    out, tout = ours(x), theirs(tx)
    _assert_close(out, tout)
    (out ** 2).sum().backward()
    (tout ** 2).sum().backward()
    _assert_close(x.grad, tx.grad)
    for (_name, p), tp in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        _assert_close(p.grad, tp.grad)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_is_one_product_named_as_torch(bias):
    """A 2-D linear records one entry that reads the weight in place (no transposed copy,
    no separate bias add), named as torch names it."""
    torch = pytest.importorskip("torch")
    ours, theirs = nn.Linear(4, 3, bias=bias), torch.nn.Linear(4, 3, bias=bias)
    x = np.ones((2, 4), np.float32)
    out, tout = ours(jitgrad.tensor(x)), theirs(torch.tensor(x))
    assert type(out.grad_fn).__name__ == type(tout.grad_fn).__name__
    leaves = [f[0] for f in out.grad_fn.next_functions if f[0] is not None]
    assert all(type(f).__name__ == "AccumulateGrad" for f in leaves)
    assert {id(f.variable) for f in leaves} == {id(p) for p in ours.parameters()}


@pytest.mark.parametrize("wanted", ["bias", "weight", "input"])
def test_linear_gradient_of_one_operand_alone(wanted):
    """Only one operand requires grad (the others are constants): the sweep still runs the
    product's step for it."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    tensors = {name: jitgrad.tensor(v, requires_grad=name == wanted)
               for name, v in (("input", x), ("weight", w), ("bias", b))}
    out = F.linear(tensors["input"], tensors["weight"], tensors["bias"])
    (out * out).sum().backward()
    g = 2 * (x @ w.T + b)
    expected = {"input": g @ w, "weight": g.T @ x, "bias": g.sum(0)}[wanted]
    np.testing.assert_allclose(tensors[wanted].grad.numpy(), expected, rtol=1e-12)


def test_linear_second_order_and_forward_mode():
    """The fused product under create_graph, func.hvp (the second-order sweep), jvp and
    forward_ad, against the same model written with a transposed weight and an add."""
    from jitgrad import func
    from jitgrad.autograd import forward_ad as fwad

    rng = np.random.default_rng(4)
    w1, b1 = jitgrad.tensor(rng.standard_normal((6, 4))), jitgrad.tensor(rng.standard_normal(6))
    w2 = jitgrad.tensor(rng.standard_normal((1, 6)))
    x, v = jitgrad.tensor(rng.standard_normal((3, 4))), jitgrad.tensor(rng.standard_normal((3, 4)))

    def fused(x):
        return F.linear(jitgrad.tanh(F.linear(x, w1, b1)), w2).sum()

    def plain(x):
        return jitgrad.matmul(jitgrad.tanh(jitgrad.matmul(x, w1.t()) + b1), w2.t()).sum()

    np.testing.assert_allclose(func.hvp(fused, (x,), (v,)).numpy(),
                               func.hvp(plain, (x,), (v,)).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(func.hessian(fused)(x).numpy(), func.hessian(plain)(x).numpy(),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(func.jvp(fused, (x,), (v,))[1].numpy(),
                               func.jvp(plain, (x,), (v,))[1].numpy(), rtol=1e-12)
    for f in (fused, plain):
        with fwad.dual_level():
            t = fwad.unpack_dual(f(fwad.make_dual(x, v))).tangent
        np.testing.assert_allclose(t.numpy(), func.jvp(plain, (x,), (v,))[1].numpy(),
                                   rtol=1e-12)
    # the bias alone moving: a direction on the bias
    vb = jitgrad.tensor(rng.standard_normal(6))
    g = lambda b: F.linear(x, w1, b)  # noqa: E731
    np.testing.assert_allclose(func.jvp(g, (b1,), (vb,))[1].numpy(),
                               np.broadcast_to(vb.numpy(), (3, 6)), rtol=1e-12)
    with fwad.dual_level():
        t = fwad.unpack_dual(g(fwad.make_dual(b1, vb))).tangent
    np.testing.assert_allclose(t.numpy(), np.broadcast_to(vb.numpy(), (3, 6)), rtol=1e-12)


def test_linear_in_a_compiled_tape():
    rng = np.random.default_rng(5)
    w, b = jitgrad.tensor(rng.standard_normal((3, 4))), jitgrad.tensor(rng.standard_normal(3))
    f = lambda x: jitgrad.tanh(F.linear(x, w, b)).sum()  # noqa: E731
    x0 = rng.standard_normal((2, 4))
    tape = jitgrad.compile(f, x0)
    x1 = rng.standard_normal((2, 4))
    value, grad = tape.value_and_grad(x1)
    xt = jitgrad.tensor(x1, requires_grad=True)
    expected = f(xt)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12)


def test_linear_float32_and_repeated_steps():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Linear(6, 2)
    ours = nn.Linear(6, 2)
    _copy_weights(ours, theirs)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    for _ in range(3):  # several backwards in a row, each in a fresh tape generation
        ours.zero_grad()
        theirs.zero_grad()
        ours(jitgrad.tensor(x)).sum().backward()
        theirs(torch.tensor(x)).sum().backward()
        np.testing.assert_allclose(_np(ours.weight.grad), theirs.weight.grad.numpy(),
                                   rtol=1e-5)
    assert ours(jitgrad.tensor(x)).dtype is jitgrad.float32


@pytest.mark.parametrize("name, args", [
    ("ReLU", ()), ("Tanh", ()), ("Sigmoid", ()), ("Softmax", (1,)), ("LogSoftmax", (1,)),
    ("Softmax", (0,)), ("Flatten", ()), ("Flatten", (0, 1)), ("Identity", ()),
])
def test_activation_modules_match_torch(name, args):
    torch = pytest.importorskip("torch")
    data = np.random.default_rng(2).standard_normal((3, 4, 2))
    if name in ("Softmax", "LogSoftmax"):
        data = data[:, :, 0]
    x, tx = _both(data)
    out, tout = getattr(nn, name)(*args)(x), getattr(torch.nn, name)(*args)(tx)
    assert out.shape == tout.shape
    _assert_close(out, tout)
    weights = np.random.default_rng(3).standard_normal(tuple(tout.shape))
    (out * jitgrad.tensor(weights)).sum().backward()
    (tout * torch.tensor(weights)).sum().backward()
    _assert_close(x.grad, tx.grad)


def test_softmax_without_dim_warns_and_picks_torchs_dim():
    x = jitgrad.tensor([[1.0, 2.0], [3.0, 5.0]])
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        out = F.softmax(x)
    np.testing.assert_allclose(_np(out).sum(1), [1.0, 1.0], rtol=1e-6)


def test_dropout():
    jitgrad.manual_seed(0)
    x = jitgrad.ones(100, 100, requires_grad=True)
    drop = nn.Dropout(0.3)
    out = drop(x)
    values = _np(out)
    assert set(np.unique(values).tolist()) == {0.0, np.float32(1 / 0.7).item()}
    assert abs((values == 0).mean() - 0.3) < 0.02
    out.sum().backward()
    np.testing.assert_array_equal(_np(x.grad), values)  # d(x * mask)/dx = mask
    jitgrad.manual_seed(0)
    assert jitgrad.equal(drop(x), out)  # reproducible
    assert drop.eval()(x) is x
    assert F.dropout(x, 0.0) is x
    assert _np(F.dropout(x, 1.0)).max() == 0.0
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="between 0 and 1, but got -0.1"):
        F.dropout(x, -0.1)


def test_embedding_matches_torch_with_padding():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Embedding(6, 3, padding_idx=2).double()
    ours = nn.Embedding(6, 3, padding_idx=2).double()
    assert _np(ours.weight)[2].tolist() == [0.0, 0.0, 0.0]
    _copy_weights(ours, theirs)
    index = [[0, 2, 5], [2, 2, 1]]
    out, tout = ours(jitgrad.tensor(index)), theirs(torch.tensor(index))
    _assert_close(out, tout)
    weights = np.random.default_rng(4).standard_normal((2, 3, 3))
    (out * jitgrad.tensor(weights)).sum().backward()
    (tout * torch.tensor(weights)).sum().backward()
    _assert_close(ours.weight.grad, theirs.weight.grad)
    assert _np(ours.weight.grad)[2].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(IndexError, match="index out of range in self"):
        ours(jitgrad.tensor([6]))
    with pytest.raises(IndexError, match="index out of range in self"):
        ours(jitgrad.tensor([-1]))
    with pytest.raises(RuntimeError, match="Long"):
        ours(jitgrad.tensor([1.0]))


def test_containers():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and seq[0] is a and seq[-1] is c and list(seq) == [a, b, c]
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == [b, c]
    with pytest.raises(IndexError, match="index 3 is out of range"):
        seq[3]
    seq.append(nn.Sigmoid())
    assert len(seq) == 4 and seq(jitgrad.ones(5, 2)).shape == (5, 1)
    from collections import OrderedDict

    named = nn.Sequential(OrderedDict([("first", a), ("act", b)]))
    assert [n for n, _ in named.named_parameters()] == ["first.weight", "first.bias"]
    layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    layers.append(nn.Linear(2, 1))
    layers.insert(0, nn.Tanh())
    assert len(layers) == 4 and isinstance(layers[0], nn.Tanh)
    assert len(list(layers.parameters())) == 6
    assert [n for n, _ in layers.named_children()] == ["0", "1", "2", "3"]


# -- losses ------------------------------------------------------------------------------------
_RNG = np.random.default_rng(5)
_LOGITS = _RNG.standard_normal((6, 5))
_LABELS = np.array([0, 4, 2, 2, 1, 3])
_LABELS_IGNORED = np.array([0, -100, 2, 2, -100, 3])
_CLASS_WEIGHTS = np.array([0.5, 1.0, 2.0, 1.5, 0.7])
_PROBS = _RNG.random((4, 3)) * 0.98 + 0.01
_TARGETS = _RNG.random((4, 3))


def _loss_cases():
    """(name, our call, torch's call, float inputs, integer inputs)."""
    w = _CLASS_WEIGHTS
    x4 = _RNG.standard_normal((2, 5, 3, 2))
    labels4 = _RNG.integers(0, 5, (2, 3, 2))
    soft = _RNG.random((6, 5))
    soft /= soft.sum(1, keepdims=True)
    return [
        ("cross_entropy", {}, [_LOGITS], [_LABELS]),
        ("cross_entropy", {"ignore_index": -100}, [_LOGITS], [_LABELS_IGNORED]),
        ("cross_entropy", {"weight": w}, [_LOGITS], [_LABELS_IGNORED]),
        ("cross_entropy", {"label_smoothing": 0.2}, [_LOGITS], [_LABELS_IGNORED]),
        ("cross_entropy", {"weight": w, "label_smoothing": 0.1}, [_LOGITS], [_LABELS_IGNORED]),
        ("cross_entropy", {"ignore_index": 2}, [_LOGITS], [_LABELS]),
        ("cross_entropy", {}, [x4], [labels4]),
        ("cross_entropy", {}, [_LOGITS[0]], [np.int64(3)]),
        ("cross_entropy", {"weight": w, "label_smoothing": 0.1}, [_LOGITS, soft], []),
        ("nll_loss", {}, [_LOGITS], [_LABELS]),
        ("nll_loss", {"weight": w}, [_LOGITS], [_LABELS_IGNORED]),
        ("nll_loss", {}, [x4], [labels4]),
        ("mse_loss", {}, [_LOGITS, _LOGITS[::-1] * 0.5], []),
        ("l1_loss", {}, [_LOGITS, _LOGITS[::-1] * 0.5], []),
        ("binary_cross_entropy", {}, [_PROBS, _TARGETS], []),
        ("binary_cross_entropy", {"weight": _TARGETS[0]}, [_PROBS, _TARGETS], []),
        ("binary_cross_entropy_with_logits", {}, [_LOGITS[:4, :3] * 40, _TARGETS], []),
        ("binary_cross_entropy_with_logits", {"pos_weight": np.array([1.0, 2.0, 0.5]),
                                              "weight": _TARGETS[1]},
         [_LOGITS[:4, :3], _TARGETS], []),
        ("binary_cross_entropy_with_logits", {}, [np.zeros((2, 3)), _TARGETS[:2]], []),
    ]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", range(len(_loss_cases())))
def test_loss_functions_match_torch(case, reduction):
    torch = pytest.importorskip("torch")
    name, options, floats, ints = _loss_cases()[case]
    pairs = [_both(a) for a in floats]
    if name.startswith("binary") or name in ("mse_loss", "l1_loss") or len(floats) == 2:
        pairs[1] = _both(floats[1], requires_grad=False)
    ours_kw = {k: jitgrad.tensor(v) for k, v in options.items() if isinstance(v, np.ndarray)}
    theirs_kw = {k: torch.tensor(v) for k, v in options.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in options.items() if not isinstance(v, np.ndarray)}
    out = getattr(F, name)(*[p[0] for p in pairs], *[jitgrad.tensor(i) for i in ints],
                           reduction=reduction, **ours_kw, **scalars)
    tout = getattr(torch.nn.functional, name)(*[p[1] for p in pairs],
                                              *[torch.tensor(i) for i in ints],
                                              reduction=reduction, **theirs_kw, **scalars)
    assert out.shape == tout.shape
    _assert_close(out, tout, 1e-10)
    weights = np.random.default_rng(6).standard_normal(tuple(tout.shape))
    (out * jitgrad.tensor(weights)).sum().backward()
    (tout * torch.tensor(weights)).sum().backward()
    _assert_close(pairs[0][0].grad, pairs[0][1].grad, 1e-10)


@pytest.mark.parametrize("module, function, args", [
    ("MSELoss", "mse_loss", {}), ("L1Loss", "l1_loss", {}),
    ("CrossEntropyLoss", "cross_entropy", {"label_smoothing": 0.1}),
    ("NLLLoss", "nll_loss", {"ignore_index": 1}), ("BCELoss", "binary_cross_entropy", {}),
    ("BCEWithLogitsLoss", "binary_cross_entropy_with_logits", {}),
])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_modules_call_their_function(module, function, args, reduction):
    x = jitgrad.tensor(_PROBS)
    target = jitgrad.tensor([0, 1, 2, 1]) if function in ("cross_entropy", "nll_loss") \
        else jitgrad.tensor(_TARGETS)
    out = getattr(nn, module)(reduction=reduction, **args)(x, target)
    expected = getattr(F, function)(x, target, reduction=reduction, **args)
    np.testing.assert_array_equal(_np(out), _np(expected))


def test_loss_module_weights_are_buffers():
    loss = nn.CrossEntropyLoss(weight=jitgrad.tensor(_CLASS_WEIGHTS))
    assert list(loss.state_dict()) == ["weight"]
    assert list(nn.CrossEntropyLoss().state_dict()) == []
    with pytest.warns(UserWarning, match="size_average"):
        assert nn.MSELoss(size_average=False).reduction == "sum"


def test_binary_cross_entropy_with_logits_is_stable():
    x = jitgrad.tensor([-1000.0, 1000.0, 0.0], requires_grad=True)
    t = jitgrad.tensor([1.0, 0.0, 1.0])
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    np.testing.assert_allclose(_np(loss), [1000.0, 1000.0, math.log(2)], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(_np(x.grad), [-1.0, 1.0, -0.5], rtol=1e-6)


def test_binary_cross_entropy_at_the_edges_is_finite():
    x = jitgrad.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    t = jitgrad.tensor([0.0, 1.0, 1.0, 0.0])
    loss = F.binary_cross_entropy(x, t, reduction="none")
    np.testing.assert_allclose(_np(loss), [0.0, 0.0, 100.0, 100.0], atol=1e-6)
    loss.sum().backward()
    assert np.isfinite(_np(x.grad)).all()


def test_loss_errors_as_torch():
    x = jitgrad.randn(3, 4)
    with pytest.raises(IndexError, match="^Target 10 is out of bounds.$"):
        F.cross_entropy(x, jitgrad.tensor([0, 1, 10]))
    with pytest.raises(IndexError, match="^Target -5 is out of bounds.$"):
        nn.CrossEntropyLoss()(x, jitgrad.tensor([0, -5, 1]))
    with pytest.raises(IndexError, match="Target 4 is out of bounds."):
        F.nll_loss(x, jitgrad.tensor([0, 1, 4]))
    with pytest.raises(RuntimeError, match="expected target dtype to be Long"):
        F.cross_entropy(x, jitgrad.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"Expected input batch_size \(3\) to match target "
                                         r"batch_size \(2\)."):
        F.cross_entropy(x, jitgrad.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="weight tensor should be defined"):
        F.cross_entropy(x, jitgrad.tensor([0, 1, 2]), weight=jitgrad.ones(3))
    with pytest.raises(ValueError, match="bad is not a valid value for reduction"):
        F.mse_loss(x, x, reduction="bad")
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(jitgrad.tensor([0.5, 2.0]), jitgrad.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="different to the input size"):
        F.binary_cross_entropy(jitgrad.tensor([0.5]), jitgrad.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="must be the same as input size"):
        F.binary_cross_entropy_with_logits(jitgrad.tensor([0.5]), jitgrad.tensor([0.0, 1.0]))
    with pytest.warns(UserWarning, match="likely lead to incorrect results"):
        F.mse_loss(jitgrad.zeros(3, 1), jitgrad.zeros(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.mse_loss(jitgrad.zeros(3), jitgrad.zeros(3))


def test_cross_entropy_all_ignored_is_nan_as_torch():
    loss = F.cross_entropy(jitgrad.randn(2, 3), jitgrad.tensor([-100, -100]))
    assert math.isnan(loss.item())


def test_one_hot():
    assert F.one_hot(jitgrad.tensor([0, 2])).tolist() == [[1, 0, 0], [0, 0, 1]]
    assert F.one_hot(jitgrad.tensor([1]), 4).tolist() == [[0, 1, 0, 0]]


# -- a short training run ------------------------------------------------------------------------
def test_digits_mlp_learns():
    datasets = pytest.importorskip("sklearn.datasets")
    from jitgrad.utils.data import DataLoader, TensorDataset

    images, labels = datasets.load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1400], order[1400:]
    jitgrad.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    opt = jitgrad.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(TensorDataset(jitgrad.tensor(images[train]),
                                      jitgrad.tensor(labels[train])),
                        batch_size=64, shuffle=True)
    losses = []
    for _ in range(4):
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    with jitgrad.no_grad():
        predicted = model(jitgrad.tensor(images[test])).argmax(1).numpy()
    accuracy = (predicted == labels[test]).mean()
    assert losses[-1] < losses[0] / 5
    assert accuracy >= 0.93, accuracy


def test_linear_bad_shapes_raise_torch_errors():
    x, w = jitgrad.randn(3, 5), jitgrad.randn(2, 4)
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(3x5 "
                                           r"and 4x2\)"):
        F.linear(x, w)
    with pytest.raises(RuntimeError, match=r"the bias has shape \[3\].*shape \[2\]"):
        F.linear(jitgrad.randn(3, 4), w, jitgrad.randn(3))
    with pytest.raises(RuntimeError, match="2-D weight"):
        F.linear(jitgrad.randn(3, 4), jitgrad.randn(4))
    # a bias that broadcasts another way still works, as in torch
    assert F.linear(jitgrad.randn(3, 4), w, jitgrad.randn(1, 2)).shape == (3, 2)
    x, full = jitgrad.randn(3, 4), jitgrad.randn(3, 2)
    np.testing.assert_allclose(F.linear(x, w, full).numpy(),
                               x.numpy() @ w.numpy().T + full.numpy(), rtol=1e-6)
