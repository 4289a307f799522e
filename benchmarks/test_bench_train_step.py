"""One SGD-momentum training step of the reference MNIST CNN: fastconv vs PyTorch.

Before timing, fastconv's step is checked against PyTorch's (same initial weights and
batch: losses and updated weights agree over two steps); without torch, that repeated
steps on one batch lower its loss. Batch 64 and 256; in smoke mode each step runs once.
"""

import pytest

from benchmarks import training


@pytest.fixture(scope="module")
def train_step_checked():
    """Check fastconv's step once: against PyTorch's, or (without torch) that it learns a fixed batch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        training.check_loss_decreases()
        return "loss decreases (torch not installed)"
    training.check_train_step()
    return "agrees with torch"


@pytest.mark.parametrize("batch", training.TRAIN_BATCHES)
@pytest.mark.parametrize("impl", training.TRAIN_IMPLEMENTATIONS)
def test_train_step(benchmark, smoke, train_step_checked, impl, batch):
    reason = training.unavailable_reason(impl)
    if reason is not None:
        pytest.skip(reason)
    step = training.STEPS[impl](batch)
    if not smoke:
        step()  # warm-up: compilation is not timed
    benchmark.group = f"train_step batch {batch}"
    benchmark.extra_info.update(
        batch=batch, check=train_step_checked, forward_gflop_per_image=training.FORWARD_FLOP_PER_IMAGE / 1e9
    )
    loss = benchmark(step)
    assert loss == loss and loss > 0, f"{impl} training step returned loss {loss!r}"
