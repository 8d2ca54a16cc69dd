"""The check of the options every solver shares: ``rtol``, ``atol`` and ``maxiter``."""
from __future__ import annotations

import math
import numbers
import operator

__all__ = ["check_options", "OptionTypeError"]


class OptionTypeError(TypeError, ValueError):
    """An option of the wrong type (a string, None, a bool, an array with axes, a float ``maxiter``).

    Both a ``TypeError`` (what the type is) and a ``ValueError`` (what SciPy's solvers raise for an
    invalid tolerance such as ``atol=None`` or ``atol="legacy"``), so code written for either
    contract catches it.
    """


def _prefix(method) -> str:
    return f"{method}: " if method else ""


def _real(value, name, method) -> float:
    """``value`` as a float: a real number or a 0-d real array (as SciPy takes ``rtol``)."""
    dtype = getattr(value, "dtype", None)
    if isinstance(value, (bool,)) or (dtype is not None and getattr(dtype, "kind", "") == "b"):
        raise OptionTypeError(f"{_prefix(method)}{name} must be a real number, got {type(value).__name__} {value!r}")
    if isinstance(value, numbers.Real):
        number = float(value)
    elif dtype is not None and getattr(value, "ndim", None) == 0 and getattr(dtype, "kind", "") in "iuf":
        number = float(value)
    else:
        kind = f"an array of shape {tuple(value.shape)}" if getattr(value, "shape", None) else type(value).__name__
        raise OptionTypeError(f"{_prefix(method)}{name} must be a real number (or a 0-d real array), got "
                              f"{kind}: {value!r}")
    if math.isnan(number) or number < 0:
        raise ValueError(f"{_prefix(method)}{name} must be a real number >= 0 (inf allowed), got {value!r}")
    return number


def check_options(rtol=1e-5, atol=0.0, maxiter=None, *, method=None):
    """Check and normalise the options shared by every solver.

    Parameters
    ----------
    rtol, atol : real number or 0-d real array
        ``>= 0``; ``inf`` is allowed (as in SciPy: every system counts as converged at once).
    maxiter : int or None
        An integer ``>= 0`` (Python or NumPy integer, not a bool, not a float), or None.
    method : str, optional
        Prefixed to the error messages.

    Returns
    -------
    (float, float, int or None)

    Raises
    ------
    OptionTypeError
        A value of the wrong type (a string, None, a bool, a float ``maxiter``, an array with
        axes); a subclass of both ``TypeError`` and ``ValueError``.  The message names the option.
    ValueError
        A negative or NaN tolerance, a negative ``maxiter``; the message names the option.
    """
    rtol = _real(rtol, "rtol", method)
    atol = _real(atol, "atol", method)
    if maxiter is not None:
        dtype = getattr(maxiter, "dtype", None)
        if isinstance(maxiter, bool) or (dtype is not None and getattr(dtype, "kind", "") == "b"):
            raise OptionTypeError(f"{_prefix(method)}maxiter must be an integer or None, got bool {maxiter!r}")
        try:
            value = operator.index(maxiter)
        except TypeError:
            raise OptionTypeError(f"{_prefix(method)}maxiter must be an integer or None, got "
                            f"{type(maxiter).__name__} {maxiter!r}") from None
        if value < 0:
            raise ValueError(f"{_prefix(method)}maxiter must be an integer >= 0 or None, got {maxiter!r}")
        maxiter = int(value)
    return rtol, atol, maxiter
