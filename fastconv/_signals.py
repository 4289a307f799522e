"""Turn SIGINT, SIGTERM and SIGHUP into a request to stop a training loop between two steps.

A batch scheduler sends SIGTERM before it preempts a job (and ``kill`` sends it), closing
a terminal sends SIGHUP, Ctrl-C sends SIGINT. By default each of them kills the process
(SIGINT raises ``KeyboardInterrupt`` somewhere inside a step), and the work since the last
checkpoint is lost. Inside ``with StopOnSignals() as stop:`` the first of them only sets
``stop.signum``; the loop asks ``stop()`` after every step, stops there with the model,
the optimizer and the epoch's bookkeeping consistent, saves a checkpoint and exits with
``stop.exit_code`` (``128 + signum``, what a shell reports for a process killed by that
signal). A second signal aborts at once with :class:`SignalAbort`, saving nothing.

Public through :mod:`fastconv.training` (``training.StopOnSignals``).
"""

import signal
import sys

__all__ = ["DEFAULT_SIGNALS", "SignalAbort", "StopOnSignals"]

#: The signals :class:`StopOnSignals` handles by default (those this platform has).
DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def signal_name(signum):
    """``"SIGTERM"`` for ``signal.SIGTERM``; ``"signal 42"`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalAbort(KeyboardInterrupt):
    """A second stop signal arrived: abort at once, without saving.

    A subclass of ``KeyboardInterrupt``, so code that handles Ctrl-C handles it too.

    Attributes
    ----------
    signum : int
        The signal received.
    exit_code : int
        ``128 + signum``.
    """

    def __init__(self, signum):
        super().__init__(f"{signal_name(signum)} received twice: aborting without saving")
        self.signum = signum
        self.exit_code = 128 + signum


class StopOnSignals:
    """Context manager: the first SIGINT/SIGTERM/SIGHUP asks the loop to stop after the current step.

    On entry it installs its handler for ``signals``; on exit it puts the previous handlers
    back (also after an exception). Outside the main thread, where Python cannot install
    signal handlers, it installs nothing and ``stop()`` stays False.

    Parameters
    ----------
    signals : iterable of int, default (SIGINT, SIGTERM, SIGHUP)
    stream : file, default sys.stderr
        Where the one-line notice goes when a stop is first noticed (``None``: silent).
        It is written by ``stop()``, never from inside the signal handler (which could
        interrupt another write to the same stream).

    Attributes
    ----------
    signum : int or None
        The first signal received, ``None`` before any.

    Examples
    --------
    >>> import os, signal
    >>> from fastconv.training import StopOnSignals
    >>> with StopOnSignals(stream=None) as stop:
    ...     for step in range(100):
    ...         if step == 3:                     # stands for a SIGTERM from outside
    ...             os.kill(os.getpid(), signal.SIGTERM)
    ...         if stop():                       # after the step: stop here, save, exit
    ...             break
    >>> step, stop.name, stop.exit_code
    (3, 'SIGTERM', 143)
    >>> signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the previous handler is back
    True
    """

    def __init__(self, signals=DEFAULT_SIGNALS, stream=sys.stderr):
        self.signals = tuple(signals)
        self.stream = stream
        self.signum = None
        self._noticed = False
        self._previous = {}

    @property
    def requested(self):
        """True once a stop signal has arrived."""
        return self.signum is not None

    @property
    def name(self):
        """Name of the signal received (``"SIGTERM"``), or ``None``."""
        return None if self.signum is None else signal_name(self.signum)

    @property
    def exit_code(self):
        """``128 + signum``: the exit status a shell shows for a process killed by that signal (0 before any)."""
        return 0 if self.signum is None else 128 + self.signum

    def __call__(self):
        """True if the loop should stop now (pass the object itself as ``should_stop``)."""
        if self.signum is not None and not self._noticed:
            self._noticed = True
            if self.stream is not None:
                print(f"\n{self.name} received: stopping after this step and saving a checkpoint "
                      f"(send it again to abort without saving)", file=self.stream, flush=True)
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise SignalAbort(signum)
        self.signum = signum

    def __enter__(self):
        self.signum, self._noticed = None, False
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: leave the signals alone
            self._restore()
        return self

    def __exit__(self, *exc):
        self._restore()

    def _restore(self):
        while self._previous:
            sig, previous = self._previous.popitem()
            # None: the handler was not installed from Python; the default action is the best guess.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
