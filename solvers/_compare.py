"""Run several solvers on the same system: a table, JSON-ready records and convergence plots."""
from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence

import numpy as np

from ._cg import cg
from ._gauss_seidel import gauss_seidel
from ._gmres import gmres
from ._jacobi import jacobi
from ._accelerated import amg_cg, ssor_cg
from ._chebyshev import chebyshev
from ._sor import sor

__all__ = ["compare", "Comparison", "ComparisonRow", "SOLVERS"]

#: the solvers ``compare`` knows by name
SOLVERS = {"jacobi": jacobi, "gauss_seidel": gauss_seidel, "sor": sor, "chebyshev": chebyshev, "gmres": gmres,
           "cg": cg, "ssor_cg": ssor_cg, "amg_cg": amg_cg}


@dataclasses.dataclass
class ComparisonRow:
    """One solver's outcome.  For a batched ``b`` the row summarises the batch: ``converged`` is
    True when every system converged, ``iterations`` and ``relative_residual`` are the maxima,
    ``history`` is the largest relative residual per iteration."""

    method: str
    converged: bool
    iterations: int
    matvecs: int
    time_s: float
    relative_residual: float
    history: np.ndarray  # relative residual norms ||r_k|| / ||b||, shape (iterations + 1,)
    result: object = dataclasses.field(repr=False, default=None)  # the full SolveResult

    def to_record(self):
        return {
            "method": self.method,
            "converged": bool(self.converged),
            "iterations": int(self.iterations),
            "matvecs": int(self.matvecs),
            "time_s": float(self.time_s),
            "relative_residual": float(self.relative_residual),
            "history": [float(v) for v in self.history],
        }


class Comparison(Sequence):
    """A list-like table of :class:`ComparisonRow`, one per solver, in the order they ran."""

    def __init__(self, rows):
        self.rows = list(rows)

    def __getitem__(self, i):
        if isinstance(i, str):
            for row in self.rows:
                if row.method == i:
                    return row
            raise KeyError(i)
        return self.rows[i]

    def __len__(self):
        return len(self.rows)

    def to_records(self):
        """List of JSON-ready dicts (histories as lists of floats)."""
        return [row.to_record() for row in self.rows]

    def __str__(self):
        head = ("method", "converged", "iterations", "matvecs", "time [s]", "rel. residual")
        body = [
            (r.method, "yes" if r.converged else "no", str(r.iterations), str(r.matvecs),
             f"{r.time_s:.4g}", f"{r.relative_residual:.3e}")
            for r in self.rows
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        fmt_row = lambda cells: "  ".join(  # noqa: E731
            c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(cells, widths))
        )
        lines = [fmt_row(head), "  ".join("-" * wd for wd in widths)] + [fmt_row(b) for b in body]
        return "\n".join(lines)

    def __repr__(self):
        return f"Comparison({[r.method for r in self.rows]})"

    def plot(self, target=None, *, title=None):
        """Relative residual vs iteration and vs wall time (log y), with Matplotlib.

        ``target``: None (return a new Figure), a path (str/PathLike: the figure is saved there,
        e.g. a PNG), a pair of Axes to draw into, or a single Axes (residual vs iteration only).  The time axis spreads each solver's total time
        evenly over its iterations (one cost per iteration is assumed).  Uses
        ``matplotlib.figure.Figure`` (no pyplot), so no display is needed.  Returns the Figure.
        """
        from matplotlib.figure import Figure

        if target is None or isinstance(target, (str, os.PathLike)):
            fig = Figure(figsize=(10, 4), layout="constrained")
            ax_it, ax_t = fig.subplots(1, 2)
        elif hasattr(target, "semilogy"):  # a single Axes
            ax_it, ax_t = target, None
            fig = target.figure
        else:
            ax_it, ax_t = target
            fig = ax_it.figure
        for row in self.rows:
            h = np.maximum(np.asarray(row.history, dtype=np.float64), np.finfo(np.float64).tiny)
            its = np.arange(len(h))
            ts = np.linspace(0.0, row.time_s, len(h))
            ax_it.semilogy(its, h, label=row.method)
            if ax_t is not None:
                ax_t.semilogy(ts, h, label=row.method)
        ax_it.set_xlabel("iteration")
        if ax_t is not None:
            ax_t.set_xlabel("wall time [s]")
        for ax in (ax_it, ax_t)[: 1 if ax_t is None else 2]:
            ax.set_ylabel("||b - A x|| / ||b||")
            ax.grid(True, which="both", alpha=0.3)
        ax_it.legend()
        if title:
            fig.suptitle(title)
        if isinstance(target, (str, os.PathLike)):
            fig.savefig(target, dpi=120)
        return fig


def _resolve(spec):
    """(label, solver, kwargs) from a method spec."""
    if isinstance(spec, str):
        if spec not in SOLVERS:
            raise ValueError(f"unknown method {spec!r}; known: {sorted(SOLVERS)}")
        return spec, SOLVERS[spec], {}
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        label, what = spec
        if callable(what):
            return str(label), what, {}
        if isinstance(what, dict):
            what = dict(what)
            name = what.pop("method", label)
            if name not in SOLVERS:
                raise ValueError(f"unknown method {name!r} for {label!r}; known: {sorted(SOLVERS)}")
            return str(label), SOLVERS[name], what
    raise TypeError(
        f"a method is a name, or a (label, solver callable) or (label, {{'method': name, **options}}) "
        f"pair; got {spec!r}"
    )


def _accepted(func, kwargs):
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def compare(A, b, methods=("jacobi", "gauss_seidel", "gmres", "cg"), *, options=None, verbose=True, save=None,
            **common):
    """Run several solvers on the same system ``A x = b`` and tabulate them.

    Parameters
    ----------
    A, b : as for the solvers (``b`` of shape ``(n,)`` or ``(*batch, n)``).
    methods : sequence
        Each entry is a solver name (``"jacobi"``, ``"gauss_seidel"``, ``"sor"``, ``"chebyshev"``,
        ``"gmres"``, ``"cg"``, ``"ssor_cg"``, ``"amg_cg"``; the last two build their preconditioner
        in the call, and their ``time_s`` includes it), a pair
        ``(label, callable)`` with ``callable(A, b, **kwargs) -> SolveResult``, or a pair
        ``(label, {"method": name, **options})`` (e.g. ``("sor-1.5", {"method": "gauss_seidel",
        "omega": 1.5})``).
    options : dict, optional
        Per-method keyword arguments keyed by label, e.g. ``{"gmres": {"restart": 30}}``.
    verbose : bool
        Print the table (``str()`` of the result) on standard output when done (default True;
        ``False`` keeps quiet).
    save : str or PathLike, optional
        Write the convergence plot (relative residual vs iteration and vs wall time, see
        :meth:`Comparison.plot`) to this path, e.g. ``"compare.png"``; the path is printed when
        ``verbose``.
    **common
        Keyword arguments for every method (``x0``, ``rtol``, ``atol``, ``maxiter``, ``M``, ...);
        each method gets only those its signature accepts (``M`` is not passed to Jacobi).

    Returns
    -------
    Comparison
        One row per method; ``str()`` is an aligned table, ``to_records()`` JSON-ready dicts,
        ``plot()`` convergence curves.
    """
    options = dict(options or {})
    rows = []
    for spec in methods:
        label, func, kw = _resolve(spec)
        kwargs = _accepted(func, common)
        kwargs.update(kw)
        kwargs.update(options.get(label, {}))
        res = func(A, b, **kwargs)
        bn = np.asarray(res.b_norm, dtype=np.float64)
        hist = np.asarray(res.residual_norms, dtype=np.float64)
        rel = hist / np.where(bn > 0, bn, 1.0)
        rel = rel.reshape(rel.shape[0], -1).max(axis=1)
        rows.append(ComparisonRow(
            method=label,
            converged=bool(np.all(res.converged)),
            iterations=int(np.max(res.iterations)),
            matvecs=int(res.matvecs),
            time_s=float(res.time_s),
            relative_residual=float(np.max(res.relative_residual)),
            history=rel,
            result=res,
        ))
    table = Comparison(rows)
    if verbose:
        print(table, flush=True)
    if save is not None:
        table.plot(save)
        if verbose:
            print(f"wrote {os.fspath(save)}", flush=True)
    return table
