"""Exceptions shared by the solvers and by the G-CRF operators."""
from __future__ import annotations

import numpy as np

__all__ = ["NotPositiveDefiniteError"]


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    """The system matrix is not symmetric positive definite.

    Raised by :func:`solvers.cg` when it meets a direction ``p`` with ``p^T A p <= 0``, and by the
    G-CRF operators when a positive-definiteness bound is violated.  The message names the quantity
    and the bound; the same facts are attributes for programs.

    Attributes
    ----------
    quantity : str or None
        What was checked, e.g. ``"lam"`` or ``"p^T A p"``.
    value : float or None
        The value that was seen.
    bound : float or None
        The bound it had to exceed (``value > bound`` is required).
    system : tuple or None
        Batch index of the offending system, when the input was batched.
    """

    def __init__(self, message, *, quantity=None, value=None, bound=None, system=None):
        super().__init__(message)
        self.quantity = quantity
        self.value = value
        self.bound = bound
        self.system = system
