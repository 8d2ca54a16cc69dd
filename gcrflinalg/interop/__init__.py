"""Differentiable G-CRF layers for deep-learning frameworks.

- :mod:`gcrflinalg.interop.torch`: :func:`~gcrflinalg.interop.torch.gcrf_solve` (a
  PyTorch custom operator, ``torch.compile``-able) and one ``torch.nn.Module`` layer per form.
- :mod:`gcrflinalg.interop.jax`: :func:`~gcrflinalg.interop.jax.gcrf_solve` (a ``jax.custom_vjp``
  function running the solves on the CPU through ``jax.pure_callback``).

Both hand their arrays to the core through DLPack and import their framework only when used, so this
package (and ``gcrflinalg``) imports without PyTorch or JAX installed.  The forms they know, and the
names and layouts of each form's parameters, are listed in :data:`FORMS`.
"""
from __future__ import annotations

from ._forms import FORMS, NotConvergedError, NotConvergedWarning

__all__ = ["FORMS", "NotConvergedError", "NotConvergedWarning"]
