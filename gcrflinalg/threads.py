"""Threads of the compiled CPU kernels: how many run, and how they share the work.

gcrflinalg's parallel Numba kernels (the general grid product, the red-black reduction's blocks and
products) follow one policy, chosen by measurement on a 2-core machine with another process keeping
one core busy (docs/design.md, section 4, "Threads"):

1. **Dynamic scheduling.**  Every parallel kernel runs its loop with Numba's chunk size 1
   (:func:`numba.set_parallel_chunksize`): a thread that has lost its core to another process
   (a data loader, PyTorch's own threads, another job) holds up at most the one chunk it is
   working on, and the threads that still run take the rest.  With Numba's default static
   schedule every thread owns a fixed share and the whole product waits for the slowest one;
   that is what made a contended grid solve several times slower than a serial one.
2. **How many threads** (:func:`get_num_threads`), the first that applies of:

   - a count given to :func:`num_threads` (a context manager) or :func:`set_num_threads`;
   - the environment variable ``GCRFLINALG_NUM_THREADS`` (read at every call);
   - Numba's count, :func:`numba.get_num_threads` (``NUMBA_NUM_THREADS`` or the CPU count),

   lowered to a framework's count where one is followed (:func:`follow`): the PyTorch layer
   follows :func:`torch.get_num_threads`, so a training process that limits PyTorch's threads
   limits these too.  The result is never above Numba's pool size, and never below 1.
3. **Small problems run on one thread**: a kernel splits its work only when it is large enough
   (e.g. ``PARALLEL_MIN_ENTRIES`` of :mod:`gcrflinalg.forms.grid.kernels`) and never into more
   parts than it has work items.
4. **Short kernels called many times in a row** (the steps of a Lanczos run, about a millisecond
   each) wait at a barrier on every call, and on a machine whose cores are taken by other
   processes that wait (a lost time slice, several milliseconds) can cost more than the call: such
   a caller times its calls with :class:`StepThreads`, which tries one thread against the count
   above and keeps the faster.  This applies only where the result does not depend on the thread
   count (the work is split the same way whatever the count).

The settings are thread-local in Numba and restored after every kernel, so user code that calls
Numba itself is not affected.  BLAS calls (low-rank and video forms) keep the BLAS library's own
threads; limit them with ``threadpoolctl`` or ``OPENBLAS_NUM_THREADS`` if needed.

Examples
--------
>>> import gcrflinalg
>>> gcrflinalg.set_num_threads(1)          # every later solve runs the kernels serially
>>> gcrflinalg.set_num_threads(None)       # back to the automatic count
>>> with gcrflinalg.num_threads(1):        # only inside the block
...     pass
"""
from __future__ import annotations

import contextlib
import contextvars
import os

__all__ = ["get_num_threads", "set_num_threads", "num_threads", "follow", "parallel_kernel",
           "StepThreads", "ENV_VARIABLE", "CHUNK_SIZE"]

#: environment variable giving the default thread count of the kernels
ENV_VARIABLE = "GCRFLINALG_NUM_THREADS"

#: Numba chunk size of the parallel kernels (1: dynamic scheduling, one work item at a time)
CHUNK_SIZE = 1

_AUTO = "auto"  # a context's "automatic" (num_threads(None)): ignores set_num_threads
_global_count: int | None = None
_context_count: contextvars.ContextVar = contextvars.ContextVar("gcrflinalg_num_threads", default=None)
_framework_cap: contextvars.ContextVar = contextvars.ContextVar("gcrflinalg_thread_cap", default=None)


def _pool_size() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _check(n) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"the thread count must be an integer or None; got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"the thread count must be >= 1; got {n}")
    return n


def _env_count() -> int | None:
    value = os.environ.get(ENV_VARIABLE, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def get_num_threads() -> int:
    """The number of threads the parallel kernels use now (see the module docstring)."""
    explicit = _context_count.get()
    if explicit is None:
        explicit = _global_count
    elif explicit == _AUTO:
        explicit = None
    if explicit is None:
        explicit = _env_count()
    if explicit is None:
        import numba

        n = numba.get_num_threads()
        cap = _framework_cap.get()
        if cap is not None:
            n = min(n, cap)
    else:
        n = explicit
    return max(1, min(n, _pool_size()))


def set_num_threads(n: int | None) -> None:
    """Set the thread count of gcrflinalg's kernels for the whole process; ``None`` restores the
    automatic choice (``GCRFLINALG_NUM_THREADS``, else Numba's count, lowered to a followed
    framework's).  Counts above Numba's pool size are lowered to it."""
    global _global_count
    _global_count = _check(n)


@contextlib.contextmanager
def num_threads(n: int | None):
    """Context manager: the kernels use ``n`` threads inside the block (``None``: automatic), and
    the previous setting afterwards.  Local to the calling thread (and asyncio task)."""
    n = _check(n)
    token = _context_count.set(_AUTO if n is None else n)
    try:
        yield
    finally:
        _context_count.reset(token)


@contextlib.contextmanager
def follow(n: int | None):
    """Context manager for framework layers: within the block the *automatic* thread count is at
    most ``n`` (e.g. ``torch.get_num_threads()``); an explicit count still wins."""
    token = _framework_cap.set(None if n is None else max(1, int(n)))
    try:
        yield
    finally:
        _framework_cap.reset(token)


@contextlib.contextmanager
def parallel_kernel(threads: int | None = None):
    """Run a parallel Numba kernel inside the block with ``threads`` threads (default
    :func:`get_num_threads`) and dynamic scheduling (:data:`CHUNK_SIZE`); Numba's thread-local
    settings are restored afterwards.  Yields the thread count."""
    import numba

    n = get_num_threads() if threads is None else max(1, min(int(threads), _pool_size()))
    previous_n = numba.get_num_threads()
    previous_chunk = numba.get_parallel_chunksize()
    numba.set_num_threads(n)
    numba.set_parallel_chunksize(CHUNK_SIZE)
    try:
        yield n
    finally:
        numba.set_parallel_chunksize(previous_chunk)
        numba.set_num_threads(previous_n)


#: choosers kept by :meth:`StepThreads.shared`
SHARED_CHOOSERS = 64
_shared_choosers: dict = {}


class StepThreads:
    """The thread count of a kernel called many times in a row, chosen by timing the calls.

    Call :meth:`count` before each call and :meth:`record` with its wall time after it.  With
    ``n = get_num_threads() > 1`` (read once, at construction) a *trial* runs one call on ``n``
    threads and the next on one thread, and the faster count is kept.  A trial runs first, again
    when a call on ``n`` threads takes more than twice the fastest one so far (the cores were
    taken), and every ``period`` calls while one thread is kept (they may be free again).  On an
    idle machine this costs one single-threaded call; where other processes hold the cores, the
    barriers of a parallel call can make it several times slower than a serial one, and the serial
    count is then kept.  For kernels whose result does not depend on the thread count only.

    Parameters
    ----------
    period : int
        Calls on one thread between two trials (>= 1).
    threads : int, optional
        The parallel count to try (default :func:`get_num_threads`).
    """

    def __init__(self, period: int = 10, threads: int | None = None):
        self.parallel = get_num_threads() if threads is None else max(1, int(threads))
        self.period = max(1, int(period))
        self.choice = self.parallel
        self._trial = {}  # count -> wall time of the trial's calls so far
        self._fastest = float("inf")  # fastest call on `parallel` threads
        self._since = 0  # calls on one thread since the last trial
        self._last = None

    @classmethod
    def shared(cls, key, **kwargs) -> "StepThreads":
        """The chooser of ``key`` (e.g. a kernel and a problem size) for the calling thread and the
        current :func:`get_num_threads`, kept between runs: a later run of the same kernel on the
        same size starts from what the earlier ones learnt (no trial on an idle machine; a call
        more than twice as slow as the fastest still starts one).  At most
        :data:`SHARED_CHOOSERS` are kept (the least recently used go)."""
        import threading

        full = (threading.get_ident(), get_num_threads(), key)
        chooser = _shared_choosers.pop(full, None)
        if chooser is None:
            chooser = cls(**kwargs)
        _shared_choosers[full] = chooser  # most recently used last
        while len(_shared_choosers) > SHARED_CHOOSERS:
            _shared_choosers.pop(next(iter(_shared_choosers)))
        return chooser

    def count(self) -> int:
        """The thread count of the next call."""
        if self.parallel == 1:
            self._last = 1
        elif self._trial is not None:  # a trial: n threads first, then one
            self._last = 1 if self.parallel in self._trial else self.parallel
        else:
            self._last = self.choice
        return self._last

    def record(self, seconds: float) -> None:
        """The wall time of the call just made (after :meth:`count`)."""
        if self.parallel == 1:
            return
        seconds = float(seconds)
        if self._last == self.parallel:
            slow = seconds > 2.0 * self._fastest
            self._fastest = min(self._fastest, seconds)
        if self._trial is not None:
            self._trial[self._last] = seconds
            if len(self._trial) == 2:
                self.choice = min(self._trial, key=self._trial.get)
                self._trial, self._since = None, 0
        elif self.choice == self.parallel:
            if slow:
                self._trial = {}
        else:
            self._since += 1
            if self._since >= self.period:
                self._trial = {}
