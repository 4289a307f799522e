"""fastconv.optim: SGD and Adam against torch.optim, state_dict resume, validation."""

import numpy as np
import pytest

from fastconv import nn, optim
from fastconv import serialization

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
SHAPES = [(3, 2, 3, 3), (3,), (4, 5)]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _params(dtype, seed=0):
    gen = np.random.default_rng(seed)
    return [nn.Parameter(gen.standard_normal(s).astype(dtype)) for s in SHAPES]


def _grads(step, dtype):
    gen = np.random.default_rng(1000 + step)
    return [gen.standard_normal(s).astype(dtype) for s in SHAPES]


def _run(params, opt, steps, start=0):
    for step in range(start, start + steps):
        for p, g in zip(params, _grads(step, params[0].data.dtype)):
            p.grad[...] = g
        opt.step()


SGD_CONFIGS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "nesterov": dict(lr=0.1, momentum=0.9, nesterov=True),
    "weight-decay": dict(lr=0.1, weight_decay=0.01),
    "all": dict(lr=0.07, momentum=0.5, weight_decay=0.1, nesterov=True),
}
ADAM_CONFIGS = {
    "default": dict(),
    "lr-betas": dict(lr=0.01, betas=(0.8, 0.99)),
    "weight-decay": dict(lr=0.01, weight_decay=0.05),
    "eps": dict(lr=0.02, eps=1e-3),
    "amsgrad": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
}
CASES = [pytest.param("SGD", k, id=f"sgd-{k}") for k in SGD_CONFIGS] + [
    pytest.param("Adam", k, id=f"adam-{k}") for k in ADAM_CONFIGS
]


def _make(name, config, params):
    kwargs = (SGD_CONFIGS if name == "SGD" else ADAM_CONFIGS)[config]
    return getattr(optim, name)(params, **kwargs), kwargs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, config", CASES)
def test_matches_torch_for_several_steps(name, config, dtype, torch):
    params = _params(dtype)
    opt, kwargs = _make(name, config, params)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, name)(tparams, **kwargs)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for step in range(6):
        grads = _grads(step, dtype)
        for p, tp, g in zip(params, tparams, grads):
            p.grad[...] = g
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=rtol,
                                       err_msg=f"step {step}, param {i}")


def test_grad_is_not_modified_and_data_updated_in_place():
    params = _params(np.float64)
    arrays = [p.data for p in params]
    opt = optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
    for p, g in zip(params, _grads(0, np.float64)):
        p.grad[...] = g
    grads = [p.grad.copy() for p in params]
    opt.step()
    opt.step()
    assert all(a is p.data for a, p in zip(arrays, params))
    assert all(np.array_equal(g, p.grad) for g, p in zip(grads, params))


def test_sgd_formula_first_steps():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.5, momentum=0.9, dampening=0.1)
    p.grad[...] = [1.0, 1.0]
    opt.step()  # buf = g
    np.testing.assert_allclose(p.data, [0.5, -2.5])
    opt.step()  # buf = 0.9 * 1 + 0.9 * 1 = 1.8
    np.testing.assert_allclose(p.data, [0.5 - 0.9, -2.5 - 0.9])


def test_adam_first_step_is_lr_times_sign():
    # after one step with bias correction, m/sqrt(v) = sign(g) (eps aside)
    p = nn.Parameter(np.array([1.0, 1.0, 1.0]))
    opt = optim.Adam([p], lr=0.1, eps=0.0)
    p.grad[...] = [3.0, -0.5, 1e-3]
    opt.step()
    np.testing.assert_allclose(p.data, [0.9, 1.1, 0.9], rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, config", CASES)
def test_resume_from_state_dict_is_bitwise_identical(name, config, dtype, tmp_path):
    params = _params(dtype)
    opt, _ = _make(name, config, params)
    _run(params, opt, 3)
    path = tmp_path / "ckpt.npz"
    serialization.save({"params": [p.data for p in params], "optim": opt.state_dict()}, path)
    _run(params, opt, 3, start=3)  # the uninterrupted run

    ckpt = serialization.load(path)
    resumed = _params(dtype, seed=99)  # different values, overwritten below
    for p, saved in zip(resumed, ckpt["params"]):
        p.data[...] = saved
    opt2, _ = _make(name, config, resumed)
    opt2.load_state_dict(ckpt["optim"])
    _run(resumed, opt2, 3, start=3)
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.data, q.data)
    assert repr(opt2) == repr(opt)


def test_state_dict_layout_and_copies():
    params = _params(np.float64)
    opt = optim.Adam(params, lr=0.01)
    _run(params, opt, 2)
    sd = opt.state_dict()
    assert sorted(sd) == ["param_groups", "state"]
    assert sd["param_groups"] == [dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                                       params=[0, 1, 2])]
    assert sorted(sd["state"]) == [0, 1, 2]
    assert sd["state"][0]["step"] == 2
    sd["state"][0]["exp_avg"] += 1  # a copy: the optimizer is unaffected
    assert not np.array_equal(sd["state"][0]["exp_avg"], opt.state[params[0]]["exp_avg"])


def test_load_state_dict_restores_hyperparameters():
    params = _params(np.float64)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    opt.param_groups[0]["lr"] = 0.5
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["params"] == params


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda sd: sd["param_groups"][0]["params"].pop(), ValueError, "2 parameters in the state"),
        (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), ValueError, "2 parameter groups"),
        (lambda sd: sd["state"][1].update(momentum_buffer=np.zeros(7)), ValueError, r"shape \(7,\)"),
        (lambda sd: sd["state"][1].update(momentum_buffer=np.zeros(3, np.float32)), ValueError, "float32"),
        (lambda sd: sd["state"].update({5: {}}), ValueError, "index 5"),
        (lambda sd: sd["state"][0].update(bogus=1), ValueError, "bogus"),
        (lambda sd: sd["param_groups"][0].update(lr=-1.0), ValueError, "learning rate"),
        (lambda sd: sd.pop("state"), TypeError, "state"),
    ],
    ids=["fewer-params", "more-groups", "buffer-shape", "buffer-dtype", "bad-index", "unknown-entry",
         "bad-lr", "no-state"],
)
def test_load_state_dict_rejects_mismatches(mutate, exc, match):
    params = _params(np.float64)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    _run(params, opt, 1)
    sd = opt.state_dict()
    before = opt.state_dict()
    mutate(sd)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()  # unchanged
    assert after["param_groups"] == before["param_groups"]
    assert all(np.array_equal(after["state"][i]["momentum_buffer"], before["state"][i]["momentum_buffer"])
               for i in before["state"])


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda p: optim.SGD(p, lr=-0.1), ValueError, "learning rate"),
        (lambda p: optim.SGD(p, lr=float("nan")), ValueError, "learning rate"),
        (lambda p: optim.SGD(p, lr="0.1"), TypeError, "lr"),
        (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), ValueError, "momentum"),
        (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
        (lambda p: optim.SGD(p, lr=0.1, nesterov=True), ValueError, "Nesterov"),
        (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "Nesterov"),
        (lambda p: optim.Adam(p, lr=-1e-3), ValueError, "learning rate"),
        (lambda p: optim.Adam(p, betas=(1.0, 0.999)), ValueError, "index 0"),
        (lambda p: optim.Adam(p, betas=(0.9, -0.1)), ValueError, "index 1"),
        (lambda p: optim.Adam(p, betas=0.9), TypeError, "betas"),
        (lambda p: optim.Adam(p, eps=-1e-8), ValueError, "epsilon"),
        (lambda p: optim.Adam(p, weight_decay=-0.1), ValueError, "weight_decay"),
        (lambda p: optim.SGD([], lr=0.1), ValueError, "empty parameter list"),
        (lambda p: optim.SGD(p + p[:1], lr=0.1), ValueError, "more than once"),
        (lambda p: optim.SGD([np.zeros(3)], lr=0.1), TypeError, "Parameter"),
        (lambda p: optim.SGD(p[0], lr=0.1), TypeError, "iterable"),
        (lambda p: optim.SGD([{"params": p, "foo": 1}], lr=0.1), ValueError, "foo"),
    ],
    ids=["sgd-lr-neg", "sgd-lr-nan", "sgd-lr-str", "sgd-momentum", "sgd-wd", "nesterov-no-momentum",
         "nesterov-dampening", "adam-lr", "adam-beta1", "adam-beta2", "adam-betas-scalar", "adam-eps", "adam-wd",
         "empty", "duplicate", "not-parameter", "single-parameter", "unknown-hyper"],
)
def test_hyperparameter_validation(make, exc, match):
    with pytest.raises(exc, match=match):
        make(_params(np.float64))


def test_param_groups_match_torch(torch):
    params = _params(np.float64)
    groups = [{"params": params[:1], "lr": 0.5}, {"params": params[1:], "momentum": 0.9}]
    opt = optim.SGD(groups, lr=0.1)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    topt = torch.optim.SGD([{"params": tparams[:1], "lr": 0.5}, {"params": tparams[1:], "momentum": 0.9}], lr=0.1)
    for step in range(3):
        for p, tp, g in zip(params, tparams, _grads(step, np.float64)):
            p.grad[...] = g
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]


def test_zero_grad_closure_and_repr():
    params = _params(np.float32)
    for p in params:
        p.grad[...] = 1
    opt = optim.SGD(params, lr=0.1)
    assert opt.step(closure=lambda: 3.5) == 3.5
    opt.zero_grad()
    assert all(not p.grad.any() for p in params)
    assert repr(opt) == ("SGD (\nParameter Group 0\n    dampening: 0.0\n    lr: 0.1\n    momentum: 0.0\n"
                         "    nesterov: False\n    weight_decay: 0.0\n)")


def test_model_parameters_plug_in():
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    opt = optim.Adam(model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
