"""Helpers shared by the studies: command-line options, backends, progress, tables and records."""
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
    "add_common_arguments",
    "array_module",
    "Progress",
    "markdown_table",
    "write_json",
    "write_csv",
    "to_jsonable",
    "prepare_out",
    "best_time",
]


def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: str, quick_help: str) -> None:
    """Add ``--out``, ``--quick``, ``--backend``, ``--seed`` and ``--no-progress`` to ``parser``."""
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help="folder the figures and records are written to (created if missing; "
                             "default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--backend", choices=("cpu", "gpu"), default="cpu",
                        help="array backend: 'cpu' (NumPy/SciPy; the default) or 'gpu' (CuPy on an NVIDIA "
                             "GPU; stops with a clear message when CuPy or a GPU is missing)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the built-in problems: the same seed gives the same problems "
                             "(default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true",
                        help="do not show the progress bar on standard error")


def array_module(backend: str):
    """``numpy`` for ``"cpu"``, ``cupy`` for ``"gpu"``; ``SystemExit`` with a clear message otherwise."""
    if backend == "cpu":
        return np
    if backend == "gpu":
        from gcrflinalg.backend import cupy_available

        if not cupy_available():
            raise SystemExit("error: --backend gpu needs CuPy and a CUDA GPU; install gcrflinalg[cuda12] "
                             "on a machine with an NVIDIA GPU, or use --backend cpu")
        import cupy

        return cupy
    raise SystemExit(f"error: unknown backend {backend!r} (choose cpu or gpu)")


class Progress:
    """A progress bar on standard error: ``tqdm`` when installed, a plain counter otherwise.

    Use as a context manager; ``update(n)`` advances, ``write(msg)`` prints a line without breaking
    the bar, and calling the object with a message sets the description (the form the per-family
    timing modules use: ``progress("grid: 64 x 64")``).
    """

    def __init__(self, total: int | None, desc: str = "", *, enabled: bool = True, stream=None):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.count = 0
        self._bar = None
        self._last = 0.0
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, file=self.stream, leave=False, dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __call__(self, message=None, *args, **kwargs):
        if message is not None:
            self.set_description(str(message))

    def set_description(self, message: str) -> None:
        self.desc = message
        if self._bar is not None:
            self._bar.set_description_str(message)
        elif self.enabled:
            self._print()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last > 0.5:
            self._print()

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        elif self.enabled:
            print(message, file=self.stream)

    def _print(self):
        self._last = time.monotonic()
        total = f"/{self.total}" if self.total else ""
        print(f"\r{self.desc} {self.count}{total}", end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.count:
            print(file=self.stream)


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
    """``obj`` with NumPy scalars/arrays and tuples turned into JSON types (NaN/Inf become None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
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
    """Write ``obj`` as indented JSON (NumPy types converted)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_jsonable(obj), fh, indent=1)
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


def best_time(fn, *, repeats: int = 3, warmup: bool = True, xp=np) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call
    (which excludes compilation); device work is synchronised around each call."""
    from gcrflinalg.backend import synchronize

    if warmup:
        fn()
        synchronize(xp)
    best = math.inf
    for _ in range(max(1, int(repeats))):
        synchronize(xp)
        t0 = time.perf_counter()
        fn()
        synchronize(xp)
        best = min(best, time.perf_counter() - t0)
    return best


def paired_best(fn_a, fn_b, *, repeats: int, xp=np) -> tuple[float, float]:
    """Best wall times of ``fn_a`` and ``fn_b`` measured alternately (after one warm-up call of
    each), so that a load change on a shared machine affects both alike."""
    from gcrflinalg.backend import synchronize

    fn_a(), fn_b()
    best = [math.inf, math.inf]
    for _ in range(max(1, int(repeats))):
        for k, fn in enumerate((fn_a, fn_b)):
            synchronize(xp)
            t0 = time.perf_counter()
            fn()
            synchronize(xp)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]
