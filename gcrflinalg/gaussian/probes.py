"""Probe vectors of the stochastic trace estimators: Rademacher signs, and signs restricted to the
classes of a colouring of the pixel grid.

Hutchinson's estimator ``tr f(M) ~ z^T f(M) z`` with Rademacher ``z`` has variance
``2 sum_{i != j} f(M)_ij^2``: every off-diagonal entry counts, and on the grid forms the largest
ones couple neighbouring pixels.  Split the unknowns into classes ``c`` such that no two
neighbouring pixels share one, and draw each probe on one class only (``z_k = s_k * 1[class ==
c_k]``, ``s_k`` random signs).  Then

    tr f(M) = sum_c tr_c f(M),      tr_c f(M) ~ mean_{k : c_k = c} z_k^T f(M) z_k

is still unbiased, and its variance ``sum_c (2 / K_c) sum_{i != j in c} f(M)_ij^2`` keeps only the
entries between pixels of the same class, which are at least two steps apart on the stencil
(Tang and Saad's probing, randomised so that it stays unbiased and has a standard error).  With
``K`` probes spread round-robin over ``C`` classes (``K_c >= 2`` each), the standard error is
``sqrt(sum_c s_c^2 / K_c)``, ``s_c^2`` the sample variance of class ``c``'s ``K_c`` values.

The colouring is a lattice colouring ``(a i + b j) mod m`` of the pixel ``(i, j)`` with the smallest
``m`` that separates every offset of the form's stencil: red-black (``m = 2``) on the
4-neighbourhood, ``m = 4`` on the 8-neighbourhood, ``m = 5`` on the 12-neighbourhood.
"""
from __future__ import annotations

import numba
import numpy as np

from ..backend import _array_kernels_on
from ._common import rademacher

__all__ = ["lattice_colouring", "probe_classes", "check_probing", "class_signs", "class_estimate", "probe_columns",
           "PROBINGS"]

#: the values of the ``probing`` option of the SLQ estimator
PROBINGS = ("auto", "rademacher", "coloured")


def check_probing(probing) -> None:
    """``ValueError`` unless ``probing`` is one of :data:`PROBINGS`."""
    if probing not in PROBINGS:
        raise ValueError(f"probing must be one of {PROBINGS}; got {probing!r}")


def lattice_colouring(offsets, max_colours=16):
    """The smallest lattice colouring ``(a, b, m)``: ``colour(i, j) = (a i + b j) mod m`` differs
    between any two pixels ``(i, j)`` and ``(i + di, j + dj)`` for ``(di, dj)`` in ``offsets``.

    ``None`` when no such colouring has at most ``max_colours`` colours.
    """
    offsets = [(int(di), int(dj)) for di, dj in offsets]
    for m in range(2, int(max_colours) + 1):
        for a in range(m):
            for b in range(m):
                if all((a * di + b * dj) % m for di, dj in offsets):
                    return a, b, m
    return None


def probe_classes(op, num_probes, probing="auto"):
    """The class of every unknown of ``op`` and the class count ``C`` for ``num_probes`` probes.

    Parameters
    ----------
    op : GCRFOperator
    num_probes : int
        ``K``.
    probing : {"auto", "rademacher", "coloured"}
        ``"rademacher"``: one class (plain Hutchinson).  ``"coloured"``: the classes of
        :func:`lattice_colouring` of the stencil of a grid form (``ValueError`` on other forms or
        when ``K < 2 C``).  ``"auto"``: coloured on the grid forms when ``K >= 2 C``, plain
        otherwise.

    Returns
    -------
    entry_class : ndarray of int8, shape ``(N,)``, or None
        Class of every unknown (the pixel's colour, the same for all its labels); ``None`` for one
        class.
    C : int
    """
    check_probing(probing)
    if probing == "rademacher":
        return None, 1
    offsets = getattr(op, "offsets", None)
    colouring = None
    if offsets is not None and hasattr(op, "height") and hasattr(op, "width"):
        colouring = lattice_colouring(offsets)
    if colouring is None or int(num_probes) < 2 * colouring[2] or op.height * op.width < colouring[2]:
        if probing == "coloured":
            need = "a grid form (a pixel stencil)" if colouring is None else (
                f"at least {2 * colouring[2]} probes (2 per class) and {colouring[2]} pixels")
            raise ValueError(f"probing='coloured' needs {need}; got {type(op).__name__} with "
                             f"num_probes={num_probes}")
        return None, 1
    a, b, m = colouring
    i, j = np.meshgrid(np.arange(op.height), np.arange(op.width), indexing="ij")
    colour = ((a * i + b * j) % m).astype(np.int8)
    entry_class = np.broadcast_to(colour, (op.num_labels,) + colour.shape).reshape(-1)
    return entry_class, m


def class_signs(rng, shape, entry_class, probe_class, xp=np):
    """Probes ``z`` of ``shape = (K, *batch, N)`` (float64, on ``xp``): the signs of
    :func:`gcrflinalg.gaussian._common.rademacher`, zeroed where unknown ``i`` is not in probe
    ``k``'s class (``entry_class`` None: plain signs everywhere)."""
    z = rademacher(rng, shape, xp)
    if entry_class is not None:
        mask = entry_class[None, :] == probe_class[:, None]  # (K, N)
        z *= xp.asarray(mask.reshape((shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],)))
    return z


@numba.njit(cache=True, nogil=True)
def _probe_columns_nb(bits, entry_class, probe_class, out):  # pragma: no cover - compiled
    K, n = bits.shape
    for i in range(n):
        c = entry_class[i]
        row = out[i]
        for k in range(K):
            row[k] = 2.0 * bits[k, i] - 1.0 if probe_class[k] == c else 0.0


def probe_columns(bits, entry_class, probe_class):
    """The probes as the columns of an ``N x K`` block (C-contiguous float64): ``out[i, k] =
    2 bits[k, i] - 1`` where unknown ``i`` lies in probe ``k``'s class, 0 elsewhere.

    ``bits``: ``(K, N)`` of 0/1; ``entry_class``: ``(N,)`` or None (one class); ``probe_class``:
    ``(K,)``.  One compiled pass (array code under the array-kernel switch)."""
    K, n = bits.shape
    if entry_class is None:
        entry_class = np.zeros(n, dtype=np.int8)
        probe_class = np.zeros(K, dtype=np.int64)
    if _array_kernels_on():
        out = (2.0 * bits.T - 1.0) * (entry_class[:, None] == probe_class[None, :])
        return np.ascontiguousarray(out, dtype=np.float64)
    out = np.empty((n, K))
    _probe_columns_nb(np.ascontiguousarray(bits), np.ascontiguousarray(entry_class),
                      np.ascontiguousarray(probe_class, dtype=np.int64), out)
    return out


def class_estimate(per_probe, probe_class, num_classes):
    """Sum over classes of the class means, and its standard error.

    Parameters
    ----------
    per_probe : ndarray, shape ``(K, *batch)``
        ``z_k^T f(M) z_k`` of every probe.
    probe_class : ndarray of int, shape ``(K,)``
        Class of every probe (each class at least twice).
    num_classes : int

    Returns
    -------
    value, stderr : ndarrays, shape ``batch``
        ``sum_c mean_c`` and ``sqrt(sum_c var_c / K_c)`` (sample variances, ``ddof=1``).
    """
    value = np.zeros(per_probe.shape[1:])
    var = np.zeros(per_probe.shape[1:])
    for c in range(int(num_classes)):
        vals = per_probe[probe_class == c]
        value = value + vals.mean(axis=0)
        var = var + vals.var(axis=0, ddof=1) / vals.shape[0]
    return value, np.sqrt(var)
