"""What each rank runs in tests/test_distributed.py (``mpiexec -n K python tests/_mpi_worker.py MODE OUT ...``).

Modes
-----
step OUT
    Three float64 training steps of a small CNN through ``train_epoch(replicas=...)`` on the
    data of :func:`step_problem` (global batches of 7, 7 and 1 images: unequal shards and an
    empty one), after making rank 1's initial parameters differ; each rank writes its final
    parameters and its epoch progress to ``OUT/rank<r>.npz``.
raise OUT / exit OUT
    Rank 1 raises (or calls ``sys.exit(3)``) inside ``abort_on_exception`` while rank 0
    waits in a barrier: the job must end, not hang.
script OUT FAULT ARGS...
    ``scripts/train_mnist.py ARGS`` on the synthetic data set of tests/test_train_mnist.py.
    Every rank but 0 fails at once if it tries to write a file. FAULT is ``none``,
    ``kill:E`` (rank 1 kills itself with SIGKILL when it starts epoch E) or ``interrupt:S``
    (rank 1 alone sees a Ctrl-C after step S of the first epoch, as if the signal reached
    only that process).
"""

import importlib.util
import os
import signal
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastconv import distributed, nn, optim, serialization, training  # noqa: E402
from fastconv.models import reference_cnn  # noqa: E402


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_problem():
    """(model, optimizer, x, y, order, batch size) of the float64 step test; the same on every rank."""
    rng = np.random.default_rng(11)
    model = reference_cnn(np.float64, rng=rng, image_size=8, channels=(3,), hidden=6, num_classes=4)
    x = rng.standard_normal((15, 1, 8, 8))
    y = rng.integers(0, 4, 15)
    return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x, y, rng.permutation(15), 7


def run_step(out, world):
    model, opt, x, y, order, batch = step_problem()
    for p in model.parameters():  # rank 0's values must win
        p.data += world.rank
    replicas = distributed.Replicas(model, world)
    progress = training.train_epoch(model, nn.CrossEntropyLoss(), opt, x, y, order, batch, replicas=replicas)
    arrays = {name: p.data for name, p in model.named_parameters()}
    np.savez(out / f"rank{world.rank}.npz", loss_sum=progress.loss_sum, correct=progress.correct,
             seen=progress.seen, nbytes=replicas.averager.nbytes, **arrays)


def forbid_writes(script):
    """On ranks but 0, any file the training script writes is an error (which aborts the job)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {distributed.get_rank()} tried to write a file: {args[:1]}")
    for owner, name in ((training, "save_checkpoint"), (serialization, "save"), (Path, "write_text"),
                        (script, "plot")):
        setattr(owner, name, refuse)


def kill_rank_1_at(epoch):
    train_epoch, calls = training.train_epoch, []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        return train_epoch(*args, **kwargs)
    training.train_epoch = wrapped


def interrupt_rank_1_after(steps, script):
    """Rank 1 alone gets SIGINT right after global step ``steps`` (the script's test-only hook)."""
    os.environ[script.SELF_SIGNAL_ENV] = f"{steps}:SIGINT"


def run_script(argv, world, fault):
    script = load(REPO / "scripts" / "train_mnist.py", "_train_mnist_under_mpi")
    data = load(REPO / "tests" / "test_train_mnist.py", "_test_train_mnist").synthetic_mnist()
    script.load_mnist = lambda *args, **kwargs: data
    if not world.is_root:
        forbid_writes(script)
    kind, _, at = fault.partition(":")
    if kind == "kill" and world.rank == 1:
        kill_rank_1_at(int(at))
    if kind == "interrupt" and world.rank == 1:
        interrupt_rank_1_after(int(at), script)
    return script.main(argv)


def main():
    mode, out = sys.argv[1], Path(sys.argv[2])
    world = distributed.world()
    code = 0
    with world.abort_on_exception():
        if mode == "step":
            run_step(out, world)
        elif mode in ("raise", "exit"):
            if world.rank == 1:
                if mode == "exit":
                    sys.exit(3)
                raise RuntimeError("a failure on rank 1")
            world.barrier()
        elif mode == "script":
            code = run_script(sys.argv[4:], world, sys.argv[3])
    sys.exit(code)


if __name__ == "__main__":
    main()
