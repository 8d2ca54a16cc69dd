"""Wall time of ``method="auto"`` against ``"cg"`` and ``"direct"`` on the low-rank and video forms.

Two embedding spectra per form at the seed sizes (low-rank 41x41, L=21, D=128; video 4 frames
41x41, L=12, Ds=Dt=64), batch 2, float32 and float64:

* ``flat``: random Gaussian embeddings (clustered spectrum; CG converges in a few steps);
* ``decaying``: embeddings with singular values decaying like ``1/k`` (CG needs many steps).

Every repeat builds fresh operators (no cached factor, as in training) and runs the three methods
interleaved; the table shows the best of ``--repeats`` wall times (ms), the ratio of ``auto`` to
the better of the two, the method ``auto`` ran and the products it spent.  Usage::

    python benchmarks/auto_timing.py [--repeats 5] [--forms lowrank lowrank_potts video]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import gcrflinalg
from gcrflinalg import LowRankGCRF, LowRankPottsGCRF, VideoGCRF


def _decaying(rng, rows, cols, top, kind="inverse"):
    """A ``rows x cols`` matrix with singular values ``sqrt(top) / k`` (or ``exp(-k/10)``)."""
    k = np.arange(1, rows + 1)
    sv = np.sqrt(top) * (1.0 / k if kind == "inverse" else np.exp(-(k - 1) / 10.0))
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v = rng.standard_normal((rows, cols))
    v /= np.linalg.norm(v, axis=1, keepdims=True)  # nearly orthonormal rows for cols >> rows
    return (u * sv) @ v


def _embeddings(rng, batch, rows, cols, regime, scale):
    if regime == "flat":
        return rng.standard_normal((batch, rows, cols)) * np.sqrt(scale / cols)
    return np.stack([_decaying(rng, rows, cols, scale * rows) for _ in range(batch)])


def make_case(form, regime, dtype, seed=0, batch=2):
    """``(operator, b)`` of one benchmark case, built fresh."""
    rng = np.random.default_rng(seed)
    if form == "lowrank":
        D, L, H, W = 128, 21, 41, 41
        E = _embeddings(rng, batch, D, L * H * W, regime, 10.0).reshape(batch, D, L, H, W)
        op = LowRankGCRF(E.astype(dtype), 1.0)
        b = rng.standard_normal((batch, L, H, W)).astype(dtype)
    elif form == "lowrank_potts":
        D, L, H, W = 128, 21, 41, 41
        psi = _embeddings(rng, batch, D, H * W, regime, 1.0).reshape(batch, D, H, W)
        smax = max(np.linalg.norm(p.reshape(D, -1), 2) ** 2 for p in psi)
        op = LowRankPottsGCRF(psi.astype(dtype), 1.2 * smax, L)
        b = rng.standard_normal((batch, L, H, W)).astype(dtype)
    elif form == "video":
        V, D, L, H, W = 4, 64, 12, 41, 41
        n = L * H * W
        S = np.stack([_embeddings(rng, V, D, n, regime, 10.0) for _ in range(batch)])
        T = np.stack([_embeddings(rng, V, D, n, regime, 1.0) for _ in range(batch)])
        tmax = max(np.sum(t ** 2) for tb in T for t in tb)  # the cheap bound: nothing factored
        op = VideoGCRF(S.reshape(batch, V, D, L, H, W).astype(dtype),
                       T.reshape(batch, V, D, L, H, W).astype(dtype), 1.0 + 1.5 * tmax)
        b = rng.standard_normal((batch, V, L, H, W)).astype(dtype)
    else:
        raise ValueError(form)
    return op, b


def run(forms, repeats, methods=("auto", "cg", "direct")):
    rows = []
    for form in forms:
        for regime in ("flat", "decaying"):
            for dtype in (np.float32, np.float64):
                best = {m: np.inf for m in methods}
                info = {}
                for rep in range(repeats):
                    for m in methods:  # interleaved
                        op, b = make_case(form, regime, dtype, seed=rep)
                        t0 = time.perf_counter()
                        res = gcrflinalg.solve(op, b, method=m)
                        dt = time.perf_counter() - t0
                        best[m] = min(best[m], dt)
                        info[m] = (res.method, res.matvecs, bool(np.all(res.converged)))
                better = min(best["cg"], best["direct"])
                rows.append((form, regime, np.dtype(dtype).name, best, better, info))
                print(f"{form:14s} {regime:9s} {np.dtype(dtype).name:8s} "
                      + " ".join(f"{m}={1e3 * best[m]:8.1f}ms" for m in methods)
                      + f"  auto/best={best['auto'] / better:5.2f}"
                      + f"  auto ran {info['auto'][0]} ({info['auto'][1]} products)"
                      + f"  cg products {info['cg'][1]}"
                      + ("" if all(v[2] for v in info.values()) else "  NOT CONVERGED"), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--forms", nargs="+", default=["lowrank", "lowrank_potts", "video"])
    args = parser.parse_args(argv)
    run(args.forms, args.repeats)


if __name__ == "__main__":
    main()
