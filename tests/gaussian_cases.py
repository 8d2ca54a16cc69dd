"""Shared helpers of the Gaussian tests: operators of every form with their dense references."""
from __future__ import annotations

import numpy as np

from operator_cases import CASES, case_by_id

#: one case per form family (the fast subset of the statistical tests)
FAMILY_IDS = ["grid-n4-L1-4x5", "grid-n8-L3-4x4", "grid_potts-n8-L3-3x5", "multires-2lvl-general-potts",
              "lowrank-D3-L2-3x5", "lowrank_potts-D3-L3-3x4", "video-fc-V3-L2-2x3", "video-12-V4-L2-2x2"]
FAMILIES = [case_by_id(i) for i in FAMILY_IDS]
ALL = CASES


def with_lam(case, params, lam):
    """The operator of ``params`` with another ``lam`` (and that ``params`` dict)."""
    params = dict(params, lam=np.broadcast_to(np.asarray(lam, dtype=params["lam"].dtype),
                                              np.shape(params["lam"])).copy())
    return case.rebuild(params), params


def indefinite(case, rng):
    """An operator of ``case`` that is not positive definite, and its dense matrix."""
    op, params = case.make(rng)
    A = case.dense(dict(params, lam=np.zeros_like(params["lam"])))
    lam_min = np.linalg.eigvalsh(A)[0]
    assert lam_min < 0
    op, params = with_lam(case, params, 0.5 * -lam_min)
    return op, case.dense(params)


def reference_signs(seed, shape):
    """The documented sign stream of the stochastic estimators, written out independently: the
    bits of ``ceil(n / 8)`` bytes ``default_rng(seed).integers(0, 256, dtype=uint8)``, most
    significant first, as ``2 b - 1`` in C order."""
    n = int(np.prod(shape))
    raw = np.random.default_rng(seed).integers(0, 256, size=(n + 7) // 8, dtype=np.uint8)
    bits = [(int(byte) >> (7 - t)) & 1 for byte in raw for t in range(8)][:n]
    return (2.0 * np.array(bits, dtype=np.float64) - 1.0).reshape(shape)
