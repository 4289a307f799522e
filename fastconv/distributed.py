"""Data-parallel training across processes and machines with MPI (the Horovod recipe).

Launched as ``mpiexec -n K python train.py``, the K processes ("ranks") each hold a
replica of the model and train it on a disjoint shard of every global batch:

1. rank 0's initial parameters are broadcast to every rank (:meth:`World.broadcast_parameters`);
2. every rank draws the same permutation from one shared seed and takes its own
   contiguous part of each global batch (:meth:`World.shard`);
3. after the backward pass, one ``MPI_Allreduce`` over a preallocated flat buffer of all
   the parameter gradients turns each rank's gradient into the gradient of the whole
   global batch (:class:`GradientAverager`), so that every rank takes the same
   optimizer step and the replicas stay identical;
4. the loss sum, correct count and image count are summed over the ranks
   (:meth:`World.sum`), and rank 0 alone prints and writes files
   (:meth:`World.root_only_stdout`, :attr:`World.is_root`);
5. an exception or a non-zero exit on any rank calls ``MPI_Abort``, which ends every rank
   of the job at once with a non-zero status (:meth:`World.abort_on_exception`), instead
   of leaving the others blocked in the next collective for ever.

:class:`Replicas` bundles 1-3 for one model, and :func:`evaluate` shards an evaluation.

MPI is optional (``pip install 'fastconv[mpi]'`` installs mpi4py and the MPICH wheel,
whose ``mpiexec`` lands in the virtual environment). :func:`world` imports mpi4py only
when the process was started by an MPI launcher with more than one process (it looks
at the launchers' environment variables first: ``PMI_SIZE``/``PMI_RANK`` of MPICH,
Intel MPI and Slurm's PMI-2, ``OMPI_COMM_WORLD_SIZE`` of Open MPI, ``MV2_COMM_WORLD_SIZE``
of MVAPICH2, ``PMIX_RANK`` of PMIx launchers, ``MPI_LOCALRANKID`` of MPICH's Hydra). A
plain ``python train.py`` never initialises MPI, and a world of one process does nothing:
every method below then returns its input or does nothing, so the same loop runs
unchanged with or without ``mpiexec``. ``FASTCONV_DISTRIBUTED=0`` in the environment
makes a process ignore the launcher (a world of one).

Examples
--------
A training loop that runs alone or under ``mpiexec -n K`` (the global batch stays 64
images whatever K; each rank computes the gradient of its ``64 / K`` images)::

    import numpy as np
    from fastconv import distributed, nn, optim
    from fastconv.models import reference_cnn

    world = distributed.world()
    rng = np.random.default_rng(0)                      # the same seed on every rank
    model = reference_cnn(rng=rng)
    replicas = distributed.Replicas(model, world)       # broadcasts rank 0's parameters
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with world.abort_on_exception(), world.root_only_stdout():
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 64):
            local = world.shard(idx)                    # this rank's part of the batch
            model.zero_grad()
            loss = loss_fn(model(x[local]), y[local])
            model.backward(loss_fn.backward(), input_grad=False)
            loss_sum, _ = replicas.synchronize(len(local), len(idx), loss * len(local), 0)
            opt.step()
            print(loss_sum / len(idx))                  # printed by rank 0 only

In a single process every call is a no-op:

>>> from fastconv import distributed
>>> w = distributed.world()
>>> w.rank, w.size, w.is_root
(0, 1, True)
>>> w.shard(np.arange(5))
array([0, 1, 2, 3, 4])
>>> w.sum(2.5, 3)
(2.5, 3)

Notes
-----
**Global batch and learning rate.** The batch size is the global one: with K ranks
each computes the mean gradient of its ``B / K`` images and the allreduce forms
``sum_r (n_r / B) * g_r``, exactly the mean gradient of the whole batch. A learning
rate therefore means the same for every K (no rescaling rule is needed), and a run on
K ranks follows the single-process trajectory up to floating-point rounding. When K
does not divide the batch, the first ``B mod K`` ranks take one image more
(:func:`numpy.array_split`), and the weights ``n_r / B`` keep the gradient exact; a
rank whose shard is empty (a last batch smaller than K) contributes a zero gradient.

**BatchNorm** (not in :mod:`fastconv.nn` yet) would normalise with the statistics of
each rank's shard, as PyTorch's plain ``BatchNorm2d`` does under
``DistributedDataParallel``: the running statistics then differ between ranks and
:meth:`World.broadcast_parameters` (which also broadcasts a module's buffers, when it
has ``named_buffers``) copies rank 0's. A synchronised BatchNorm is not provided.
**Dropout** draws its masks from a generator on each rank: seeded alike on every rank
(its ``rng=`` or :func:`fastconv.nn.manual_seed`), the ranks repeat each other's masks
(on different images); seed it with the rank to decorrelate them (an unseeded one
already differs per process). Nothing else needs a per-rank seed.
"""

import contextlib
import os
import sys
import time
import traceback

import numpy as np

__all__ = [
    "GradientAverager",
    "Replicas",
    "World",
    "evaluate",
    "get_rank",
    "get_world_size",
    "launched_by_mpi",
    "world",
]

#: Environment variables an MPI launcher sets in the processes it starts.
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                      "MV2_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALRANKID")
#: Those that give the number of processes.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

_WORLD = None


def launched_by_mpi(environ=None):
    """True when the process was started by an MPI launcher for a world of more than one process.

    Decided from the environment alone (mpi4py is not imported): any of
    :data:`LAUNCHER_VARIABLES` is set, no size variable says 1, and
    ``FASTCONV_DISTRIBUTED`` is not ``0``.

    Parameters
    ----------
    environ : mapping, optional
        The environment to look at (default: ``os.environ``).

    Returns
    -------
    bool

    Examples
    --------
    >>> launched_by_mpi({})
    False
    >>> launched_by_mpi({"PMI_RANK": "0", "PMI_SIZE": "2"})
    True
    >>> launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "1"})
    False
    """
    env = os.environ if environ is None else environ
    if env.get("FASTCONV_DISTRIBUTED", "").strip() == "0":
        return False
    if not any(name in env for name in LAUNCHER_VARIABLES):
        return False
    sizes = [env[name] for name in _SIZE_VARIABLES if name in env]
    return not sizes or any(s.strip() != "1" for s in sizes)


def world():
    """The MPI world of this process (created on the first call, then the same object).

    Returns
    -------
    World
        Of size 1, without importing mpi4py, unless :func:`launched_by_mpi`.

    Raises
    ------
    RuntimeError
        Launched by ``mpiexec`` with several processes but mpi4py is not installed (each
        process would otherwise train alone and they would overwrite each other's files).

    Examples
    --------
    >>> w = world()                      # python script.py: a world of one
    >>> w.rank, w.size, w is world()
    (0, 1, True)
    """
    global _WORLD
    if _WORLD is None:
        if not launched_by_mpi():
            _WORLD = World(None)
        else:
            try:
                from mpi4py import MPI
            except ImportError as exc:
                raise RuntimeError(
                    "fastconv.distributed.world: this process was started by an MPI launcher (mpiexec) but "
                    "mpi4py is not installed; install it with: pip install 'fastconv[mpi]'") from exc
            _WORLD = World(MPI.COMM_WORLD)
    return _WORLD


def _or_default(w):
    return world() if w is None else w


def get_rank():
    """This process's rank in :func:`world` (0 without MPI), as ``torch.distributed.get_rank``.

    Examples
    --------
    >>> from fastconv import distributed
    >>> distributed.get_rank(), distributed.get_world_size()    # python script.py: one process
    (0, 1)
    """
    return world().rank


def get_world_size():
    """Number of processes of :func:`world` (1 without MPI), as ``torch.distributed.get_world_size``."""
    return world().size


class World:
    """The processes of one MPI job, with the few collectives data-parallel training needs.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        The communicator (``MPI.COMM_WORLD`` from :func:`world`); ``None`` or a
        communicator of one process gives a world of one, where every method is a no-op.

    Attributes
    ----------
    comm : mpi4py.MPI.Comm or None
        ``None`` in a world of one.
    rank, size : int
        This process's rank in ``[0, size)`` and the number of processes.
    local_rank, local_size : int
        The same among the processes on this machine (they share its cores: give each
        ``cores // local_size`` threads).

    Examples
    --------
    >>> w = World(None)
    >>> w, w.is_root, w.any(False), w.broadcast_object({"lr": 0.1})
    (World(rank=0, size=1, local_size=1), True, False, {'lr': 0.1})
    """

    def __init__(self, comm=None):
        if comm is not None and comm.Get_size() == 1:
            comm = None
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            return
        from mpi4py import MPI
        self._mpi = MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}, local_size={self.local_size})"

    @property
    def is_root(self):
        """True on rank 0, the one that prints and writes files."""
        return self.rank == 0

    # -- collectives -------------------------------------------------------------------
    def barrier(self):
        """Wait until every rank has called it."""
        if self.comm is not None:
            self.comm.Barrier()

    def broadcast_object(self, obj, root=0):
        """Rank ``root``'s ``obj`` on every rank (pickled in memory: for small Python objects)."""
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def broadcast_parameters(self, module, root=0):
        """Overwrite, in place, every parameter (and buffer) of ``module`` with rank ``root``'s values.

        Parameters
        ----------
        module : fastconv.nn.Module
            Its ``named_parameters()``, and ``named_buffers()`` when it has one. Every rank
            must hold the same architecture: names, shapes and dtypes are compared first.
        root : int

        Raises
        ------
        ValueError
            The ranks' modules differ (the message names this rank and the first difference).
        """
        if self.comm is None:
            return
        arrays = [(name, p.data) for name, p in module.named_parameters()]
        if hasattr(module, "named_buffers"):
            arrays += [(name, b) for name, b in module.named_buffers()]
        layout = [(name, a.shape, a.dtype.str) for name, a in arrays]
        root_layout = self.comm.bcast(layout, root=root)
        if root_layout != layout:
            diff = next((f"{a} here, {b} on rank {root}" for a, b in zip(layout, root_layout) if a != b),
                        f"{len(layout)} arrays here, {len(root_layout)} on rank {root}")
            raise ValueError(f"World.broadcast_parameters: the module on rank {self.rank} differs from "
                             f"rank {root}'s: {diff}")
        for _, array in arrays:
            if not array.flags.c_contiguous:
                raise ValueError(f"World.broadcast_parameters: {_!r} is not C-contiguous")
            self.comm.Bcast(array, root=root)

    def sum(self, *values):
        """Sum numbers over the ranks (one ``Allreduce`` of a float64 vector).

        Returns
        -------
        tuple
            The sums, each an ``int`` where the input was an ``int`` (exact up to 2**53),
            else a ``float``.
        """
        if self.comm is None:
            return values
        buf = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)
        return tuple(int(s) if isinstance(v, (int, np.integer)) else float(s) for v, s in zip(values, buf))

    def any(self, flag):
        """True on every rank if ``flag`` is true on any rank (to agree on stopping)."""
        if self.comm is None:
            return bool(flag)
        buf = np.array([1 if flag else 0], dtype=np.int32)
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.MAX)
        return bool(buf[0])

    def shard(self, indices):
        """This rank's contiguous part of ``indices`` (:func:`numpy.array_split` into ``size`` parts).

        The parts are disjoint and cover ``indices``; the first ``len(indices) % size``
        ranks get one element more, and a part is empty when there are fewer elements
        than ranks. With the same ``indices`` on every rank (the same seed), every rank
        takes a different part without any communication.
        """
        if self.comm is None:
            return indices
        return np.array_split(indices, self.size)[self.rank]

    # -- output and faults -------------------------------------------------------------
    @contextlib.contextmanager
    def root_only_stdout(self):
        """Within the block, ``sys.stdout`` of every rank but 0 goes to ``os.devnull``.

        stderr is left alone, so that an error on any rank is seen.
        """
        if self.is_root:
            yield self
            return
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield self

    def abort(self, code=1):
        """End every rank of the job with exit status ``code`` (``MPI_Abort``); in a world of one, return ``code``."""
        if self.comm is None:
            return code
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    @contextlib.contextmanager
    def abort_on_exception(self):
        """An exception, or ``sys.exit`` with a non-zero status, leaving the block ends the whole job.

        On one rank, an exception would otherwise leave the other ranks blocked in their
        next collective for ever; here the traceback is printed (with the rank) and
        :meth:`abort` ends every rank within a second, with status 1 (or the status given
        to ``sys.exit``). A world of one lets everything through unchanged.
        """
        try:
            yield self
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if code != 0 and self.comm is not None:
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=sys.stderr)
                self.abort(code)
            raise
        except BaseException:
            if self.comm is not None:
                print(f"fastconv.distributed: rank {self.rank} of {self.size} failed; aborting the job\n"
                      + traceback.format_exc(), file=sys.stderr, end="")
                self.abort(1)
            raise


class GradientAverager:
    """Average (or weight and sum) the parameter gradients over the ranks, one ``Allreduce`` per dtype.

    The gradients are copied into one preallocated contiguous buffer per dtype (a model
    has one), reduced in place, and copied back; the buffer is reused at every step.
    One message per step pays the network latency once; splitting it into buckets only
    helps when communication overlaps the backward pass, which a fastconv
    ``backward`` call (one call for the whole network) does not allow.

    Parameters
    ----------
    parameters : iterable of fastconv.nn.Parameter
    world : World, optional
        Default: :func:`world`.

    Attributes
    ----------
    nbytes : int
        Bytes allreduced per call (0 in a world of one).

    Examples
    --------
    >>> from fastconv.models import reference_cnn
    >>> model = reference_cnn(rng=0)
    >>> averager = GradientAverager(model.parameters())
    >>> averager.average()               # after backward, before the optimizer step
    >>> sum(p.size for p in model.parameters()) * 4   # bytes per call under mpiexec (float32)
    1686568
    """

    def __init__(self, parameters, world=None):
        self.world = _or_default(world)
        self.params = list(parameters)
        self._buckets = []
        for dtype in dict.fromkeys(p.data.dtype for p in self.params):
            group = [p for p in self.params if p.data.dtype == dtype]
            flat = np.empty(sum(p.size for p in group), dtype=dtype)
            views, start = [], 0
            for p in group:
                views.append(flat[start:start + p.size].reshape(p.shape))
                start += p.size
            self._buckets.append((flat, group, views))
        self.nbytes = 0 if self.world.comm is None else sum(flat.nbytes for flat, _, _ in self._buckets)

    def average(self, weight=None):
        """Replace every ``p.grad`` by ``sum over ranks of weight_r * p.grad_r``.

        Parameters
        ----------
        weight : float, optional
            This rank's weight; default ``1 / size`` (the mean). For shards of unequal
            sizes pass ``n_local / n_global`` (mean gradients of each shard in, mean
            gradient of the global batch out).

        Raises
        ------
        ValueError
            A parameter changed shape or dtype since construction (build a new averager).
        """
        if self.world.comm is None:
            return
        weight = 1.0 / self.world.size if weight is None else float(weight)
        mpi = self.world._mpi
        for flat, group, views in self._buckets:
            for p, view in zip(group, views):
                if p.grad.shape != view.shape or p.grad.dtype != view.dtype:
                    raise ValueError(f"GradientAverager.average: a parameter's gradient is now {p.grad.shape} "
                                     f"{p.grad.dtype}, was {view.shape} {view.dtype}; build a new averager")
                np.multiply(p.grad, weight, out=view)
            self.world.comm.Allreduce(mpi.IN_PLACE, flat, op=mpi.SUM)
            for p, view in zip(group, views):
                np.copyto(p.grad, view)


class Replicas:
    """One model replicated over the ranks of a :class:`World`: broadcast once, then synchronised every step.

    Construction broadcasts rank 0's parameters; :meth:`shard` takes this rank's part of
    a global batch and :meth:`synchronize`, called between ``backward`` and the optimizer
    step, makes the gradient that of the global batch and sums the step's metrics. In a
    world of one both return their input and nothing is copied.
    :func:`fastconv.training.train_epoch` takes a ``Replicas`` as ``replicas=``.

    Parameters
    ----------
    module : fastconv.nn.Module
    world : World, optional
        Default: :func:`world`.

    Examples
    --------
    >>> from fastconv.models import reference_cnn
    >>> replicas = Replicas(reference_cnn(rng=0))
    >>> batch = np.arange(64)
    >>> local = replicas.shard(batch)    # all 64 alone; 32 each on 2 ranks
    >>> replicas.synchronize(len(local), len(batch), 2.3 * len(local), 7)
    (147.2, 7)
    """

    def __init__(self, module, world=None):
        self.world = _or_default(world)
        self.module = module
        self.world.broadcast_parameters(module)
        self.averager = GradientAverager(module.parameters(), self.world)

    def shard(self, indices):
        """This rank's part of a global batch's ``indices`` (see :meth:`World.shard`)."""
        return self.world.shard(indices)

    def synchronize(self, n_local, n_global, loss_sum, correct):
        """Average the gradients over the ranks, weighted by shard size, and sum the step's metrics.

        Parameters
        ----------
        n_local, n_global : int
            Images in this rank's shard and in the global batch.
        loss_sum : float
            This rank's loss summed over its images (mean loss times ``n_local``; 0 for
            an empty shard, whose gradients must be zero).
        correct : int
            This rank's correctly classified images.

        Returns
        -------
        (float, int)
            The global batch's loss sum and correct count.

        Raises
        ------
        ValueError
            Unless ``0 <= n_local <= n_global`` and ``n_global >= 1``.
        """
        if not 0 <= n_local <= n_global or n_global < 1:
            raise ValueError(f"Replicas.synchronize: need 0 <= n_local <= n_global and n_global >= 1; "
                             f"got n_local={n_local}, n_global={n_global}")
        if self.world.comm is None:
            return loss_sum, correct
        self.averager.average(n_local / n_global)
        return self.world.sum(float(loss_sum), int(correct))


def evaluate(model, x, y, world=None, batch_size=1000):
    """:func:`fastconv.training.evaluate` with the images shared out over the ranks.

    Each rank evaluates its contiguous shard; the loss and accuracy are of the whole
    set and the predictions are gathered on every rank, so the result equals the
    single-process one (up to rounding of the loss sum) in ``1 / size`` of the time.

    Parameters
    ----------
    model, x, y, batch_size
        As for :func:`fastconv.training.evaluate`.
    world : World, optional
        Default: :func:`world`.

    Returns
    -------
    fastconv.training.Evaluation

    Examples
    --------
    >>> from fastconv.models import reference_cnn
    >>> x = np.zeros((8, 1, 28, 28), np.float32)
    >>> result = evaluate(reference_cnn(rng=0), x, np.zeros(8, np.int64))
    >>> result.predictions.shape, 0 <= result.accuracy <= 1
    ((8,), True)
    """
    from .training import Evaluation, evaluate as local_evaluate

    world = _or_default(world)
    if world.comm is None:
        return local_evaluate(model, x, y, batch_size)
    if len(x) != len(y):
        raise ValueError(f"distributed.evaluate: x has {len(x)} images but y has {len(y)} labels")
    if len(x) == 0:
        raise ValueError("distributed.evaluate: no images")
    model.eval()
    start = time.perf_counter()
    idx = world.shard(np.arange(len(x)))
    loss_sum, correct, predictions = 0.0, 0, np.empty(0, dtype=np.int64)
    if len(idx):
        local = local_evaluate(model, x[idx], y[idx], batch_size)
        loss_sum, correct, predictions = local.loss * len(idx), int(np.sum(local.predictions == y[idx])), \
            local.predictions
    loss_sum, correct = world.sum(loss_sum, correct)
    predictions = np.concatenate(world.comm.allgather(predictions))
    return Evaluation(loss_sum / len(x), correct / len(x), predictions, time.perf_counter() - start)
