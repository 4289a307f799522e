import numpy as np, torch, time
from fastconv import plan as P
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    x = (rng.standard_normal((3, 5, 7))*4).astype(dt)
    x.flat[[0, 5, 9]] = [1000, -1000, np.nan]
    dy = rng.standard_normal(x.shape).astype(dt)
    tx = torch.tensor(x, requires_grad=True)
    F = torch.nn.functional
    for op, strat, a, tf in [("leaky_relu","pointwise",0.01,lambda t: F.leaky_relu(t, 0.01)),("elu","pointwise",1.0,F.elu),
                            ("gelu","erf",0,F.gelu),("gelu","tanh",0,lambda t: F.gelu(t, approximate="tanh")),
                            ("silu","pointwise",0,F.silu),("sigmoid","pointwise",0,torch.sigmoid),("tanh","pointwise",0,torch.tanh)]:
        y = P.pointwise_forward(op, x, a, strat); dx = P.pointwise_backward(op, dy, x, a, strat)
        tx.grad = None; ty = tf(tx); ty.backward(torch.from_numpy(dy))
        try:
            np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)
            print(op, strat, dt.__name__, "ok")
        except AssertionError as e:
            print(op, strat, dt.__name__, "FAIL", e)
    for dim in range(3):
        for log in (False, True):
            x2 = x.copy(); x2.flat[9] = 0.3
            tx2 = torch.tensor(x2, requires_grad=True)
            ty = (F.log_softmax if log else F.softmax)(tx2, dim); ty.backward(torch.from_numpy(dy))
            y = P.softmax_forward(x2, dim, log); dx = P.softmax_backward(dy, y, dim, log)
            np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(dx, tx2.grad.numpy(), rtol=1e-4, atol=1e-5)
    print("softmax ok")
