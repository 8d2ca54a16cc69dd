"""Shared pieces of the Gaussian computations: operator checks, probes, batched products."""
from __future__ import annotations

import math
import numbers
import time

import numpy as np

from ..operator import GCRFOperator

__all__ = ["check_operator", "form_kind", "rademacher", "random_bits", "block_product", "block_product_quadratic", "block_lanczos_step",
           "as_generator", "positive_int", "synced"]


def check_operator(op) -> None:
    if not isinstance(op, GCRFOperator):
        raise TypeError(f"op must be a GCRFOperator (a G-CRF precision matrix); got {type(op).__name__}")


def synced(op):
    """A context in which ``op``'s viewed parameters are checked once (a changed array refreshes what
    the operator caches from it) and not again by each product of a long run (the column products
    of the grid form re-check them otherwise)."""
    return op._synced()


def form_kind(op) -> str:
    """``"lowrank"``, ``"lowrank_potts"``, ``"video"`` or ``"sparse"`` (a CSR assembly exists) or
    ``"other"``: which exact algorithms apply to ``op``."""
    from ..forms.lowrank import LowRankGCRF, LowRankPottsGCRF
    from ..forms.video import VideoGCRF

    if isinstance(op, LowRankGCRF):
        return "lowrank"
    if isinstance(op, LowRankPottsGCRF):
        return "lowrank_potts"
    if isinstance(op, VideoGCRF):
        return "video"
    if hasattr(op, "to_sparse"):
        return "sparse"
    return "other"


def as_generator(rng):
    """A ``numpy.random.Generator`` from ``None``, a seed or a generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (numbers.Integral, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator; got {type(rng).__name__}")


def positive_int(value, name: str) -> int:
    """``value`` as an int ``>= 1``: ``TypeError`` for a non-integer, ``ValueError`` below 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return value


def random_bits(rng, count):
    """``count`` random bits (``uint8`` 0 or 1): the bits of ``ceil(count / 8)`` uniform bytes
    ``rng.integers(0, 256, dtype=uint8)``, most significant bit first (:func:`numpy.unpackbits`);
    one draw per eight bits."""
    count = int(count)
    return np.unpackbits(rng.integers(0, 256, size=(count + 7) // 8, dtype=np.uint8), count=count)


def rademacher(rng, shape, xp=np):
    """Random signs ``+-1`` (float64) of ``shape``, drawn on the host from ``rng``: ``2 b - 1`` for
    the bits ``b`` of :func:`random_bits`, in C order."""
    z = random_bits(rng, math.prod(shape)).reshape(shape).astype(np.float64) * 2.0 - 1.0
    return z if xp is np else xp.asarray(z)


def block_product(op):
    """``V -> M V`` for ``V`` of shape ``(k, *batch_shape, N)`` in float64.

    An unbatched float64 operator with a column product (the general grid form,
    ``GridGCRF.matvec_columns``) multiplies the ``k`` vectors as the columns of ``V^T``, reading
    every stored block once.  Other forms with a CSR assembly (grid, multi-resolution) multiply the ``k`` vectors of each system as
    one sparse-times-dense-block product of the float64 CSR matrix (assembled once here); the others
    go through the operator's own batched product (one GEMM over the ``k`` vectors on the low-rank
    and video forms), evaluated in the operator's dtype and returned in float64.
    """
    xp = op.xp
    if hasattr(op, "matvec_columns") and not op.batch_shape and op.dtype == np.float64:
        # the grid's structured product on the (N, k) transpose: every stored block read once for
        # all k vectors (no copy for a Fortran-ordered V, the probe-minor layout of SLQ)
        return lambda v: op.matvec_columns(v.T).T
    if hasattr(op, "to_sparse") and math.prod(op.batch_shape) <= 64:
        mats = {idx: op.to_sparse(idx).astype(np.float64).tocsr() for idx in np.ndindex(*op.batch_shape)}
        if not op.batch_shape:
            # one system: M V^T on the (N, k) transpose, no copy for a Fortran-ordered V (the
            # probe-minor layout in which SLQ keeps its Lanczos vectors), and the result returned
            # as the transposed view (Fortran-ordered (k, N))
            mat = mats[()]
            return lambda v: (mat @ v.T).T

        def apply(v):
            out = xp.empty(v.shape, dtype=np.float64)
            for idx, mat in mats.items():
                sel = (slice(None),) + idx
                # V M = (M V^T)^T since M is symmetric: the dense-times-CSR product writes the
                # C-ordered (k, N) block directly (measured 4x faster than M times a transposed view)
                out[sel] = v[sel] @ mat
            return out

        return apply

    def apply(v):
        return op.matvec(v.astype(op.dtype, copy=False)).astype(np.float64, copy=False)

    return apply


def block_product_quadratic(op):
    """``V -> (M V, (v_k^T M v_k)_k)`` for ``V`` of shape ``(k, N)`` in float64 where the product
    computes the quadratic forms on the way (the general grid form's column product, unbatched,
    float64), else None."""
    if not (hasattr(op, "matvec_columns") and not op.batch_shape and op.dtype == np.float64):
        return None

    def apply(v):
        out, dots = op.matvec_columns(v.T, quadratic=True)
        return out.T, dots

    return apply


def block_lanczos_step(op):
    """``(W, Q, Qp, sq, cq, cp) -> (x . M x, ||x||^2)`` per column for ``(N, k)`` C-contiguous
    float64 blocks: ``x = sq W - cq Q - cp Qp`` written over ``Qp`` and ``M x`` over ``W`` in one
    pass (a Lanczos update fused with the next product; the general grid form, unbatched,
    float64, NumPy), else None.

    Its calls choose their thread count by timing (:class:`gcrflinalg.threads.StepThreads`: one
    thread where the cores are taken by other processes and the kernel's barriers would cost more
    than its threads save), with one chooser per problem shape kept between runs
    (:meth:`~gcrflinalg.threads.StepThreads.shared`), so that a run on a fresh operator of a known
    shape does not pay a trial on one thread; the result does not depend on the count."""
    if not (hasattr(op, "_lanczos_columns") and not op.batch_shape and op.dtype == np.float64
            and op.xp is np):
        return None
    from ..backend import _array_kernels_on
    from ..threads import StepThreads

    if _array_kernels_on():
        return None
    key = ("lanczos_columns", type(op).__name__, op.vector_shape, op.offsets)
    choosers = {}

    def step(W, Q, Qp, sq, cq, cp):
        chooser = choosers.get(W.shape[-1])
        if chooser is None:  # per column count: the time of a call grows with it
            chooser = choosers[W.shape[-1]] = StepThreads.shared(key + (W.shape[-1],))
        threads = chooser.count()
        t0 = time.perf_counter()
        out = op._lanczos_columns(W, Q, Qp, sq, cq, cp, threads=threads)
        chooser.record(time.perf_counter() - t0)
        return out

    return step
