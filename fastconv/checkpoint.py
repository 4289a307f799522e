"""Keep the last K checkpoints of a run, so that a corrupt newest file leaves a good one to resume from.

:class:`CheckpointFiles` names a family of files: ``ck.npz`` (the newest), ``ck.1.npz``
(its predecessor), ``ck.2.npz``, ... up to ``keep - 1``. Saving shifts them down by one (as
far as the first free name; the oldest drops out) and writes the new one as ``ck.npz``
atomically (:func:`fastconv.serialization.save`); the predecessor is made as a hard link before the new file replaces ``ck.npz`` (a rename where
the file system has no hard links), so at every moment the newest complete checkpoint is
on disk under one of the names. Loading takes the newest file that reads, and says which
files it passed over and why.

:func:`fastconv.training.save_checkpoint` and :func:`fastconv.training.load_checkpoint`
accept a :class:`CheckpointFiles` where they take a path; :func:`find_nonfinite` is the
check that keeps NaN or infinite weights out of a checkpoint.
"""

import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import serialization

__all__ = ["CheckpointFiles", "find_nonfinite"]


def find_nonfinite(obj, where=""):
    """The place (``"['model']['3.weight']"``) of the first NaN or infinity in a nested structure, or None.

    Looks into dicts, lists and tuples, at float (and complex) arrays, NumPy scalars and
    Python floats; everything else is ignored.

    Examples
    --------
    >>> import numpy as np
    >>> find_nonfinite({"w": np.ones(3), "state": [1.0, np.array([0.0, np.nan])]})
    "['state'][1]"
    >>> find_nonfinite({"w": np.ones(3), "lr": 0.1}) is None
    True
    """
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif isinstance(obj, (np.ndarray, np.generic)):
        return where if obj.dtype.kind in "fc" and not np.isfinite(obj).all() else None
    elif isinstance(obj, float):
        return where if not math.isfinite(obj) else None
    else:
        return None
    for key, value in items:
        found = find_nonfinite(value, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


class CheckpointFiles:
    """The newest ``keep`` checkpoints of a run: ``path``, then ``<stem>.1<suffix>``, ``<stem>.2<suffix>``, ...

    Parameters
    ----------
    path : str or os.PathLike
        The newest checkpoint's name, e.g. ``"ck.npz"`` (predecessors: ``ck.1.npz``, ...).
    keep : int, default 2
        How many to keep (1: only ``path``, replaced atomically by every save).

    Attributes
    ----------
    loaded : pathlib.Path or None
        The file the last :meth:`load` read.
    skipped : list of (pathlib.Path, str)
        Newer files that :meth:`load` passed over (missing, corrupt, ...) and why.

    Examples
    --------
    >>> import os, tempfile
    >>> from fastconv.checkpoint import CheckpointFiles
    >>> d = tempfile.mkdtemp()
    >>> files = CheckpointFiles(os.path.join(d, "ck.npz"), keep=2)
    >>> for step in (1, 2, 3):
    ...     _ = files.save({"step": step})
    >>> [p.name for p in files.existing()]
    ['ck.npz', 'ck.1.npz']
    >>> _ = open(files.path, "wb").write(b"garbage")       # the newest gets corrupted
    >>> files.load()["step"], files.loaded.name, [p.name for p, _ in files.skipped]
    (2, 'ck.1.npz', ['ck.npz'])
    """

    def __init__(self, path, keep=2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"CheckpointFiles: keep must be a positive int; got {keep!r}")
        self.path = Path(path)
        self.keep = keep
        self.loaded = None
        self.skipped = []

    def __repr__(self):
        return f"CheckpointFiles({str(self.path)!r}, keep={self.keep})"

    def paths(self):
        """All ``keep`` names, newest first (whether they exist or not)."""
        stem, suffix = self.path.stem, self.path.suffix
        return [self.path] + [self.path.with_name(f"{stem}.{i}{suffix}") for i in range(1, self.keep)]

    def existing(self):
        """The names that exist now, newest first."""
        return [p for p in self.paths() if p.exists()]

    def save(self, obj):
        """Write ``obj`` as the newest checkpoint (:func:`fastconv.serialization.save`), keeping ``keep - 1`` older.

        Files that the last :meth:`load` found unreadable are first renamed to
        ``<name>.corrupt`` (nothing is deleted), so that they do not push a good
        predecessor out of the family.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        for bad, _ in self.skipped:
            if bad.exists():
                os.replace(bad, bad.with_name(bad.name + ".corrupt"))
        self.skipped = []
        names = self.paths()
        # Shift down as far as the first free name (the oldest file drops out when there is none).
        gap = next((i for i, p in enumerate(names) if not p.exists()), len(names) - 1)
        for i in range(gap, 0, -1):
            if i == 1:
                self._link_or_rename(names[0], names[1])
            else:
                os.replace(names[i - 1], names[i])
        serialization.save(obj, self.path)
        return self.path

    @staticmethod
    def _link_or_rename(source, target):
        """Make ``target`` hold ``source``'s file while ``source`` stays in place (a rename if links fail)."""
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.link(source, tmp)
        except OSError:  # no hard links on this file system
            os.replace(source, target)
            return
        os.replace(tmp, target)

    def load(self, loader=serialization.load):
        """The newest checkpoint that ``loader`` reads; sets :attr:`loaded` and :attr:`skipped`.

        Parameters
        ----------
        loader : callable, default fastconv.serialization.load
            ``loader(path)``; a ``ValueError`` (such as
            :class:`~fastconv.serialization.CheckpointError`) or ``OSError`` it raises
            passes over to the next older file.

        Raises
        ------
        FileNotFoundError
            None of the names exists.
        fastconv.serialization.CheckpointError
            None of the existing files reads; the message gives every reason.
        """
        self.loaded, self.skipped = None, []
        for path in self.paths():
            if not path.exists():
                self.skipped.append((path, "does not exist"))
                continue
            try:
                obj = loader(path)
            except (ValueError, OSError) as exc:
                self.skipped.append((path, str(exc)))
                continue
            self.loaded = path
            return obj
        if not self.existing():
            names = ", ".join(str(p) for p in self.paths())
            raise FileNotFoundError(f"no checkpoint to resume from: none of {names} exists")
        reasons = "\n  ".join(f"{p}: {why}" for p, why in self.skipped)
        raise serialization.CheckpointError(f"no readable checkpoint among {self.path}'s family:\n  {reasons}")
