"""Helpers shared by every study: the command line, backends, timing, progress, tables and output.

One module so that each study has the same options (``--help``, ``--quick``, ``--backend``,
``--out``, ``--forms``, ``--seed``), the same progress display, the same timing rule (best of n,
device work synchronised) and the same way of writing and announcing its files.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np

__all__ = [
    "STUDIES",
    "study_parser",
    "add_common_arguments",
    "add_forms_argument",
    "array_module",
    "best_time",
    "paired_best",
    "Progress",
    "markdown_table",
    "write_json",
    "write_csv",
    "to_jsonable",
    "prepare_out",
    "Outputs",
    "speed_words",
    "timing_table",
    "timing_summary",
    "plot_timing_bars",
    "write_timing",
    "family_main",
    "RunLog",
    "run_sweep",
    "quartiles",
]

#: Every study runnable as ``python -m studies.<name>``, with its one-line description.
STUDIES = {
    "convergence": "iterations, products and time of every solver on built-in problems of every form, swept "
                   "over margins, sizes, dtypes and tolerances, beside the theory's predicted iterations",
    "meanfield": "Gaussian mean-field inference is Jacobi (parallel) / Gauss-Seidel (sequential)",
    "timing": "every operator family's timing entries against their peers, and the photograph vs pydensecrf2",
    "timing_grid": "grid G-CRFs (general and Potts) against SciPy cg on the assembled CSR matrix",
    "timing_lowrank": "low-rank G-CRFs (general and Potts): structured cg and direct solves against SciPy cg",
    "timing_video": "video G-CRF: cached vs pairwise temporal products, video vs single-frame solves",
    "timing_auto": "method='auto' (the default) vs every other method, per form and dtype",
    "timing_training": "training steps of the torch G-CRF layers vs forward solves and plain PyTorch; contention",
    "timing_overhead": "fresh operator + default solve vs a held operator, in products, per form and dtype",
    "train": "train a CNN with and without a G-CRF layer (needs PyTorch)",
    "uncertainty": "the G-CRF as a Gaussian: variance maps, samples, calibration; vs linear_operator and imate",
}


# --------------------------------------------------------------------------- command line
def study_parser(name: str, description: str, *, quick_help: str, forms=None, forms_default=None,
                 forms_help: str | None = None) -> argparse.ArgumentParser:
    """The parser every study starts from: ``prog`` reads ``python -m studies.<name>``, with
    ``--quick``, ``--backend``, ``--out`` (default ``results/<name>/``), ``--seed``,
    ``--no-progress`` and, when ``forms`` is given (the names allowed), ``--forms``."""
    parser = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=description)
    add_common_arguments(parser, default_out=os.path.join("results", name) + os.sep, quick_help=quick_help)
    if forms is not None:
        add_forms_argument(parser, forms, default=forms_default, help_extra=forms_help)
    return parser


def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: str, quick_help: str) -> None:
    """Add ``--quick``, ``--backend``, ``--out``, ``--seed`` and ``--no-progress`` to ``parser``."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--backend", choices=("cpu", "gpu"), default="cpu",
                        help="array backend: 'cpu' (NumPy/SciPy; the default) or 'gpu' (CuPy on an NVIDIA "
                             "GPU; stops with a clear message when CuPy or a GPU is missing)")
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help="folder the summary, records and figures are written to (created if missing; "
                             "default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the problems: the same seed gives the same problems (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display on standard error")


def add_forms_argument(parser, forms=None, *, default=None, help_extra=None) -> None:
    """``--forms FORM [FORM ...]``: space-separated names of :data:`gcrflinalg.problems.FORMS`.

    ``default``: the forms run without ``--forms`` (all of ``forms`` when None); ``"study"`` leaves
    the option's value None so that the study chooses (``help_extra`` then says how)."""
    if forms is None:
        from gcrflinalg.problems import FORMS as forms
    forms = tuple(forms)
    text = f"problem forms, space-separated, any of: {' '.join(forms)}"
    if isinstance(default, str) and default == "study":
        value = None
    else:
        value = list(default if default is not None else forms)
        text += f" (default: {' '.join(value)})"
    if help_extra:
        text += f"; {help_extra}"
    parser.add_argument("--forms", nargs="+", choices=forms, default=value, metavar="FORM", help=text)


def array_module(backend: str):
    """``numpy`` for ``"cpu"``, ``cupy`` for ``"gpu"``; ``SystemExit`` with a clear message otherwise."""
    if backend == "cpu":
        return np
    if backend == "gpu":
        from gcrflinalg import cupy_available

        if not cupy_available():
            raise SystemExit("error: --backend gpu needs CuPy and a CUDA GPU; on a machine with an NVIDIA "
                             "GPU run pip install -e '.[cuda12]' (or '.[cuda13]'), or use --backend cpu")
        import cupy

        return cupy
    raise SystemExit(f"error: unknown backend {backend!r} (choose cpu or gpu)")


# --------------------------------------------------------------------------- timing
def best_time(fn, *, repeats: int = 3, warmup: bool = True, xp=np, budget_s: float | None = None,
              return_result: bool = False):
    """Best wall time in seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call
    (which keeps compilation and first-call caches out); device work is synchronised around each call.

    ``budget_s``: stop repeating once the timed calls have used this many seconds, and when the
    warm-up call alone took longer, it is the measurement.  ``return_result``: return
    ``(seconds, the last call's result)``.
    """
    from gcrflinalg.backend import synchronize

    out = None
    if warmup:
        synchronize(xp)
        t0 = time.perf_counter()
        out = fn()
        synchronize(xp)
        warm = time.perf_counter() - t0
        if budget_s is not None and warm > budget_s:
            return (warm, out) if return_result else warm
    times = []
    while len(times) < max(1, int(repeats)) and (budget_s is None or sum(times) < budget_s):
        synchronize(xp)
        t0 = time.perf_counter()
        out = fn()
        synchronize(xp)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return (best, out) if return_result else best


def paired_best(fn_a, fn_b, *, repeats: int, xp=np, block: int = 1, gap_s: float = 0.0) -> tuple[float, float]:
    """Best wall times of ``fn_a`` and ``fn_b`` measured alternately (after one warm-up call of
    each), so that a load change on a shared machine affects both alike.

    ``block``, ``gap_s``: each turn is ``block`` calls in a row after a pause of ``gap_s`` seconds.
    Threaded libraries keep their idle threads spinning for a while after a call (OpenBLAS for up
    to about 0.1 s); alternating single calls then runs each library on cores the other's
    threads still hold, which is not how a program that uses one of them runs.  A pause longer
    than that, and the best of a block, measure each as if it ran alone.
    """
    from gcrflinalg.backend import synchronize

    fn_a(), fn_b()
    best = [math.inf, math.inf]
    for _ in range(max(1, int(repeats))):
        for k, fn in enumerate((fn_a, fn_b)):
            if gap_s > 0:
                time.sleep(gap_s)
            for _ in range(max(1, int(block))):
                synchronize(xp)
                t0 = time.perf_counter()
                fn()
                synchronize(xp)
                best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]


# --------------------------------------------------------------------------- progress
def _fmt_seconds(s):
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """Progress over a known number of items on standard error.

    On a terminal: a ``tqdm`` bar (count, rate and ETA).  Otherwise (a log file, a pipe, CI): one
    plain line per item for up to 25 items, else at every tenth of the total or every 30 s, and
    always at the end (``desc: 150/150 [02:31<00:00]``) -- no carriage returns.

    ``update(n)`` advances; calling the object with a message -- ``progress("grid: 64 x 64")`` --
    marks the start of the next step: it completes the step begun by the previous call, so that a
    loop that announces each of ``total`` steps ends at ``total/total`` on :meth:`close`.
    ``write(msg)`` prints a line without breaking the bar.  Use as a context manager.
    """

    def __init__(self, total: int | None, desc: str = "", *, enabled: bool = True, stream=None,
                 unit: str = "it"):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.count = 0
        self.unit = unit
        self._bar = None
        self._pending = False
        self._t0 = time.monotonic()
        self._last_line = -math.inf
        self._last_decile = -1
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())
        if enabled and self._tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.stream, leave=True, dynamic_ncols=True,
                             unit=unit)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(complete=exc[0] is None)

    def __call__(self, message=None, *args, **kwargs):
        """Start the next step (completing the previous one), described by ``message``."""
        if self._pending:
            self.update(1)
        self._pending = True
        if message is not None:
            self.set_description(str(message))

    def set_description(self, message: str) -> None:
        self.desc = message
        if self._bar is not None:
            self._bar.set_description_str(message)

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            self._maybe_line()

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        elif self.enabled:
            print(message, file=self.stream, flush=True)

    def _maybe_line(self, force=False):
        now = time.monotonic()
        done = self.total is not None and self.count >= self.total
        decile = int(10 * self.count / self.total) if self.total else -1
        if (force or done or (self.total is not None and self.total <= 25) or decile > self._last_decile
                or now - self._last_line >= 30.0):
            self._last_line, self._last_decile = now, decile
            elapsed = now - self._t0
            if self.total:
                rate = self.count / elapsed if elapsed > 0 else 0.0
                eta = (self.total - self.count) / rate if rate > 0 else None
                line = f"{self.desc}: {self.count}/{self.total} [{_fmt_seconds(elapsed)}<{_fmt_seconds(eta)}]"
            else:
                line = f"{self.desc}: {self.count} [{_fmt_seconds(elapsed)}]"
            print(line, file=self.stream, flush=True)

    def close(self, complete: bool = True) -> None:
        if self._pending and complete:
            self._pending = False
            self.update(1)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------- tables and records
def _fmt(value, floatfmt):
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "-"
        return format(float(value), floatfmt)
    return str(value)


def markdown_table(rows, columns, *, headers=None, floatfmt=".3g") -> str:
    """A GitHub-markdown table of ``rows`` (dicts), one column per key in ``columns``."""
    headers = list(headers or columns)
    cells = [[_fmt(row.get(c), floatfmt) for c in columns] for row in rows]
    # numbers right-aligned, text left-aligned
    numeric = [all(isinstance(row.get(c), (int, float, np.number)) or row.get(c) is None for row in rows)
               for c in columns]
    widths = [max([3, len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "| " + " | ".join("-" * (w - 1) + (":" if num else "-") for w, num in zip(widths, numeric)) + " |"]
    lines += ["| " + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)) + " |"
              for r in cells]
    return "\n".join(lines)


def to_jsonable(obj):
    """``obj`` with NumPy scalars/arrays and tuples turned into JSON types (NaN/Inf become None);
    keys starting with ``_`` (arrays kept for the figures) are left out."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def prepare_out(path) -> str:
    """Create the output folder (and parents) and return its path."""
    os.makedirs(path, exist_ok=True)
    return str(path)


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON (NumPy types converted, NaN/Inf as null)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_jsonable(obj), fh, indent=1, allow_nan=False)
        fh.write("\n")


def write_csv(path, rows, columns) -> None:
    """Write ``rows`` (dicts) as CSV with the given columns; lists are stored as JSON text."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            out = []
            for c in columns:
                v = to_jsonable(row.get(c))
                out.append(json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v))
            writer.writerow(out)


class Outputs:
    """The files one study writes into its ``--out`` folder; :meth:`report` prints their paths."""

    def __init__(self, folder):
        self.folder = prepare_out(folder)
        self.paths: list[str] = []

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _add(self, name):
        path = self.path(name)
        if path not in self.paths:
            self.paths.append(path)
        return path

    def text(self, name: str, text: str) -> str:
        path = self._add(name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
        return path

    def json(self, name: str, obj) -> str:
        path = self._add(name)
        write_json(path, obj)
        return path

    def csv(self, name: str, rows, columns) -> str:
        path = self._add(name)
        write_csv(path, rows, columns)
        return path

    def figure(self, name: str, draw) -> str:
        """``draw(path)`` writes the figure (a PNG) to the path given."""
        path = self._add(name)
        draw(path)
        return path

    def report(self, stream=None) -> None:
        """Print ``wrote:`` and one path a line (standard output)."""
        stream = stream or sys.stdout
        print("wrote:", file=stream)
        for p in self.paths:
            print(f"  {p}", file=stream)
        stream.flush()


# --------------------------------------------------------------------------- sweeps that survive
class RunLog:
    """The finished tasks of a sweep, one JSON line each, written as each task finishes.

    A task is a JSON-able dict (e.g. ``{"form": ..., "index": ..., "margin": ...}``); its result
    any JSON-able value.  With ``resume=True`` the tasks already in ``path`` are kept and
    :func:`run_sweep` skips them; otherwise the file starts empty.  Results go through a JSON
    round trip when recorded, so a resumed sweep returns exactly what an uninterrupted one does.

    Parameters
    ----------
    path : str
        The log file (e.g. ``<out>/runs.jsonl``).
    resume : bool
    """

    def __init__(self, path, *, resume: bool = False):
        self.path = str(path)
        self.results: dict[str, object] = {}
        if resume and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by the interruption
                        continue
                    self.results[self.key(entry["task"])] = entry["result"]
        else:
            prepare_out(os.path.dirname(self.path) or ".")
            open(self.path, "w", encoding="utf-8").close()

    @staticmethod
    def key(task) -> str:
        return json.dumps(to_jsonable(task), sort_keys=True)

    def __contains__(self, task) -> bool:
        return self.key(task) in self.results

    def __len__(self) -> int:
        return len(self.results)

    def get(self, task):
        return self.results[self.key(task)]

    def record(self, task, result):
        """Append ``task`` and its result (flushed to disk at once); returns the stored result."""
        stored = json.loads(json.dumps(to_jsonable(result), allow_nan=False))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"task": to_jsonable(task), "result": stored}, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.results[self.key(task)] = stored
        return stored


def run_sweep(tasks, fn, *, log: RunLog | None = None, progress: bool = True, label: str = "sweep",
              dask_address=None, describe=None):
    """Run ``fn(**task)`` for every task not already in ``log``, recording each as it finishes.

    Parameters
    ----------
    tasks : list of dict
        JSON-able keyword arguments of ``fn``, one dict per task.
    fn : callable
        Returns a JSON-able result (on a Dask cluster it runs on the workers, so it should rebuild
        what it needs from the task).
    log : RunLog, optional
        Where finished tasks go (and which are skipped); None keeps them in memory only.
    dask_address : str or distributed.Client, optional
        Run the pending tasks on an existing ``dask.distributed`` cluster, one task each.
    describe : callable, optional
        ``describe(task) -> str`` for the progress line.

    Returns
    -------
    list
        The results in the order of ``tasks`` (recorded ones from the log).
    """
    log = log if log is not None else _MemoryLog()
    pending = [t for t in tasks if t not in log]
    with Progress(len(tasks), label, enabled=progress, unit="task") as bar:
        bar.update(len(tasks) - len(pending))
        if dask_address is None:
            for task in pending:
                if describe is not None:
                    bar.set_description(f"{label}: {describe(task)}")
                log.record(task, fn(**task))
                bar.update()
        else:
            _sweep_on_dask(dask_address, pending, fn, log, bar)
    return [log.get(t) for t in tasks]


class _MemoryLog(RunLog):
    def __init__(self):
        self.results = {}

    def record(self, task, result):
        stored = json.loads(json.dumps(to_jsonable(result), allow_nan=False))
        self.results[self.key(task)] = stored
        return stored


def _sweep_on_dask(address, tasks, fn, log, bar):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SystemExit("error: --dask needs dask.distributed; pip install -e '.[dask]'") from None
    own_client = not isinstance(address, Client)
    client = Client(address) if own_client else address
    try:
        futures = {client.submit(fn, pure=False, **task): task for task in tasks}
        for future in as_completed(futures):
            log.record(futures[future], future.result())
            bar.update()
    finally:
        if own_client:
            client.close()


def quartiles(values):
    """``(q1, median, q3)`` of the finite values (None each when there are none)."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return None, None, None
    q1, med, q3 = np.percentile(vals, [25, 50, 75])
    return float(q1), float(med), float(q3)


# --------------------------------------------------------------------------- threads
#: environment variables that set the thread pools of the libraries the studies time
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "GCRFLINALG_NUM_THREADS")


def thread_settings() -> dict:
    """The thread counts the timed libraries run with in this process, as a user's process would
    have them (nothing is changed here): the CPUs, the thread variables that are set, BLAS
    (``threadpoolctl`` when installed, else ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / the
    CPU count, OpenBLAS's default), gcrflinalg's kernels, and PyTorch and ``imate`` when imported."""
    import gcrflinalg

    env = {k: os.environ[k] for k in THREAD_VARIABLES if os.environ.get(k)}
    cpus = os.cpu_count() or 1
    try:
        from threadpoolctl import threadpool_info

        blas = max((int(p["num_threads"]) for p in threadpool_info() if p.get("user_api") == "blas"), default=None)
    except ImportError:
        blas = None
    if blas is None:
        value = env.get("OPENBLAS_NUM_THREADS") or env.get("OMP_NUM_THREADS")
        blas = int(value) if value and value.isdigit() else cpus
    out = {"cpus": cpus, "env": env, "blas": blas, "gcrflinalg": gcrflinalg.get_num_threads()}
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].get_num_threads()
    if "imate" in sys.modules:
        from imate._openmp import get_avail_num_threads

        out["imate"] = int(get_avail_num_threads())
    return out


def thread_words(settings=None) -> str:
    """``"default threads: BLAS 2, gcrflinalg 2, torch 2 (2 CPUs)"`` (``"... OMP_NUM_THREADS=1 ..."``
    when thread variables are set)."""
    s = thread_settings() if settings is None else settings
    counts = ", ".join(f"{k} {s[k]}" for k in ("blas", "gcrflinalg", "torch", "imate") if k in s)
    how = " ".join(f"{k}={v}" for k, v in s["env"].items()) or "default threads"
    return f"{how}: {counts} ({s['cpus']} CPUs)".replace("blas", "BLAS")


# --------------------------------------------------------------------------- timing tables
TIMING_COLUMNS = ("family", "case", "what", "time_ms", "peer", "peer_ms", "comparison", "target", "met")


def speed_words(time_s, peer_time_s) -> str | None:
    """``"2.3x faster"`` / ``"1.5x slower"``: this measurement against its peer (None without both)."""
    if not time_s or not peer_time_s or not (math.isfinite(time_s) and math.isfinite(peer_time_s)):
        return None
    speedup = peer_time_s / time_s
    return f"{speedup:.1f}x faster" if speedup >= 1.0 else f"{1.0 / speedup:.1f}x slower"


def _timing_cells(row):
    t, pt = row.get("time_s"), row.get("peer_time_s")
    met = row.get("met")
    return dict(family=row.get("family") or row.get("entry"), case=row.get("case"), what=row.get("what"),
                time_ms=None if t is None else 1e3 * t, peer=row.get("peer"),
                peer_ms=None if pt is None else 1e3 * pt,
                comparison=speed_words(t, pt) if row.get("peer") else None,
                target=row.get("target"), met=None if met is None else ("met" if met else "MISSED"))


def timing_table(rows) -> str:
    """The one timing table of every timing study: times in ms, each comparison in words
    ("N.Nx faster/slower" than the peer), target and whether it was met."""
    return markdown_table([_timing_cells(r) for r in rows], list(TIMING_COLUMNS),
                          headers=["family", "case", "what", "time (ms)", "peer", "peer (ms)",
                                   "this vs peer", "target", "met"], floatfmt=".4g")


def timing_summary(rows) -> str:
    """A few lines for the terminal: targets met / missed (each named with its comparison), errors."""
    judged = [r for r in rows if r.get("met") is not None]
    met = [r for r in judged if r["met"]]
    lines = [f"targets: {len(met)} met, {len(judged) - len(met)} missed (of {len(judged)} judged; "
             f"{len(rows)} measurements)"]
    for r in judged:
        c = _timing_cells(r)
        lines.append(f"  {'met   ' if r['met'] else 'MISSED'} {c['family']}: {r['what']} -- "
                     f"{c['comparison'] or '-'} than {r.get('peer')} (target {r.get('target')})")
    unjudged = [r for r in rows if r.get("target") and r.get("met") is None and not r.get("error")]
    if unjudged:
        lines.append(f"  {len(unjudged)} target(s) not judged at these sizes (see the table)")
    for r in rows:
        if r.get("error"):
            lines.append(f"  error {r.get('family') or r.get('entry')}: {r['error']}")
    return "\n".join(lines)


def plot_timing_bars(rows, path, *, title: str) -> None:
    """Horizontal bars, this toolkit (blue) next to its peer (grey), in ms on a log axis; one pair per
    row that has a peer time."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    pairs = [r for r in rows if r.get("time_s") and r.get("peer_time_s")]
    n = max(1, len(pairs))
    fig = Figure(figsize=(10, 1.0 + 0.42 * n), layout="constrained")
    ax = fig.subplots()
    if pairs:
        y = np.arange(len(pairs))[::-1]
        ax.barh(y + 0.2, [1e3 * r["time_s"] for r in pairs], height=0.4, color="tab:blue", label="this toolkit")
        ax.barh(y - 0.2, [1e3 * r["peer_time_s"] for r in pairs], height=0.4, color="0.65", label="peer")
        labels = []
        for r in pairs:
            case = str(r.get("case") or "")
            labels.append(f"{r['what'][:48]}\n{case[:48]}  ({speed_words(r['time_s'], r['peer_time_s'])})")
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("wall time (ms, log scale; best of the repeats)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no measurement with a peer time", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(title, fontsize=11)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- timing studies
#: columns of ``timing.csv``
TIMING_CSV_COLUMNS = ("family", "entry", "case", "what", "time_s", "peer", "peer_time_s", "comparison", "ratio",
                      "target", "met", "iterations", "rel_residual", "error")


def write_timing(out: "Outputs", rows, *, title: str, header: str, options: dict, elapsed_s: float) -> str:
    """``timing.md`` (the full table), ``timing.json``, ``timing.csv`` and one ``timing_<family>.png``
    per family (toolkit vs peer bars) into ``out``; returns the short terminal summary."""
    import platform

    for r in rows:
        r.setdefault("family", r.get("entry"))
        r["comparison"] = speed_words(r.get("time_s"), r.get("peer_time_s")) if r.get("peer") else None
    summary = timing_summary(rows)
    text = (f"# {title}\n\n{header}\n\nTimes in ms, the best of a few repeats after a warm-up call.  "
            f"'this vs peer' compares the row's time with the peer's time measured in the same run.\n\n"
            f"```\n{summary}\n```\n\n{timing_table(rows)}\n")
    out.text("timing.md", text)
    out.json("timing.json", dict(
        study=title, options=options, elapsed_s=elapsed_s,
        environment=dict(python=platform.python_version(), numpy=np.__version__, platform=platform.platform(),
                         cpus=os.cpu_count()),
        rows=rows))
    out.csv("timing.csv", rows, TIMING_CSV_COLUMNS)
    for family in dict.fromkeys(r["family"] for r in rows):
        sel = [r for r in rows if r["family"] == family]
        out.figure(f"timing_{family}.png",
                   lambda path, sel=sel, family=family: plot_timing_bars(
                       sel, path, title=f"{family}: this toolkit vs its peer"))
    return summary


def family_main(name: str, module, argv, *, description: str, quick_help: str, add_arguments=None,
                run_kwargs=None) -> int:
    """The command line of one ``studies.timing_<family>`` module: parse, run ``module.run`` under one
    progress bar of ``module.count_steps(...)`` steps, write the timing files, print the summary."""
    parser = study_parser(name, description, quick_help=quick_help)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    array_module(args.backend)
    kwargs = run_kwargs(args) if run_kwargs is not None else {}
    out = Outputs(args.out)
    t0 = time.perf_counter()
    total = module.count_steps(quick=args.quick, **kwargs)
    with Progress(total, name, enabled=not args.no_progress, unit="step") as bar:
        rows = module.run(quick=args.quick, backend=args.backend, progress=bar, **kwargs)
    elapsed = time.perf_counter() - t0
    header = (f"{'quick sizes' if args.quick else 'full sizes'}, backend {args.backend}, {os.cpu_count()} CPUs; "
              f"{elapsed:.1f} s.")
    summary = write_timing(out, rows, title=f"Timing: {name}", header=header,
                           options=dict(quick=args.quick, backend=args.backend, **kwargs), elapsed_s=elapsed)
    print(f"{name}: {header}\n{summary}\n(the full table is in timing.md)")
    out.report()
    return 0
