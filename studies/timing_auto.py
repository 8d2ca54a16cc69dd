"""Timing of ``method="auto"``, the default method, against the other methods of every form.

``python -m studies.timing_auto`` (also a family of ``python -m studies.timing``).  Two embedding
spectra per form at the seed sizes (low-rank 41 x 41, L = 21, D = 128; video 4 frames 41 x 41,
L = 12, Ds = Dt = 64), batch 2, float32 and float64:

* ``flat``: random Gaussian embeddings (clustered spectrum; CG converges in a few steps);
* ``decaying``: embeddings with singular values decaying like ``1/k`` (CG needs many steps).

Every repeat builds fresh operators (no cached factor, as in training) and runs the three methods
interleaved; a row gives the best wall time of ``auto``, what it ran and the products it spent,
against the better of ``cg`` and ``direct`` in the same run.  Target: ``auto`` within 1.2x of the
better method.

The sparse forms, on the built-in problems of :mod:`gcrflinalg.problems` (photograph-derived,
``lam`` 5-30 % above the spectral radius of the off-diagonal part), float32 and float64:

* ``grid`` with the 4-, 8- and 12-neighbourhood (problems 0, 1 and 3), ``grid_potts`` with the
  4-neighbourhood (problem 0) and ``multires`` (problem 0);
* at size ``"medium"`` (N = 3,450-8,400) every method the form has: ``cg``, ``pcg``, ``gmres``,
  ``gauss_seidel``, ``jacobi``, ``direct``, ``reduced_cg`` on the 4-neighbourhood general grid, and
  on the Potts grid plain CG on ``M`` (``cg`` with a callback, which turns the ``L + 1`` split off);
* at size ``"large"`` (the whole photograph at stride 6 with 21 labels: 100 x 85 x 21, N = 178,500;
  multi-resolution N = 223,650) the Krylov methods (``gauss_seidel``, ``jacobi`` and ``direct``
  are several times slower at the medium size already).

Every call builds a fresh operator from the problem's parameters (the default
positive-definiteness check, the red-black layout and every factorisation are in the time) and
solves with the default options; methods run interleaved, best of 3 (medium) or 2 (large) repeats.
A row gives ``auto``'s best time, the path it ran and every method's time, against the fastest
other method in the same run.  Target: ``auto`` within 1.2x of it (``auto`` runs one of these
paths, so a ratio above 1 is the noise of the run).  ``--quick``: size ``"small"``, one repeat.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import gcrflinalg
from gcrflinalg import LowRankGCRF, LowRankPottsGCRF, VideoGCRF, problems
from studies._common import array_module, family_main

ENTRY = "auto"
FORMS = ("lowrank", "lowrank_potts", "video")
REGIMES = ("flat", "decaying")
DTYPES = (np.float32, np.float64)
TARGET = 1.2
#: the sparse forms' cases: (form, built-in problem index)
SPARSE_CASES = (("grid", 0), ("grid", 1), ("grid", 3), ("grid_potts", 0), ("multires", 0))
#: problem sizes of the sparse cases (full run; ``--quick`` runs ``"small"`` only) and their keywords
SPARSE_SIZES = {"small": dict(size="small"), "medium": dict(size="medium"),
                "large": dict(size="large", stride=6, num_labels=21)}
#: methods left out at the large size: many times slower than CG at the medium size already
LARGE_SKIPPED = ("jacobi", "gauss_seidel", "direct")


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


def make_case(form, regime, dtype, seed=0, batch=2, quick=False, xp=np):
    """``(operator, b)`` of one case, built fresh (``quick``: 15 x 15 pixels, 4 labels, D = 16)."""
    rng = np.random.default_rng(seed)
    if form == "lowrank":
        D, L, H, W = (16, 4, 15, 15) if quick else (128, 21, 41, 41)
        E = _embeddings(rng, batch, D, L * H * W, regime, 10.0).reshape(batch, D, L, H, W)
        op = LowRankGCRF(xp.asarray(E.astype(dtype)), 1.0)
        b = xp.asarray(rng.standard_normal((batch, L, H, W)).astype(dtype))
    elif form == "lowrank_potts":
        D, L, H, W = (16, 4, 15, 15) if quick else (128, 21, 41, 41)
        psi = _embeddings(rng, batch, D, H * W, regime, 1.0).reshape(batch, D, H, W)
        smax = max(np.linalg.norm(p.reshape(D, -1), 2) ** 2 for p in psi)
        op = LowRankPottsGCRF(xp.asarray(psi.astype(dtype)), 1.2 * smax, L)
        b = xp.asarray(rng.standard_normal((batch, L, H, W)).astype(dtype))
    elif form == "video":
        V, D, L, H, W = (2, 16, 4, 15, 15) if quick else (4, 64, 12, 41, 41)
        n = L * H * W
        S = np.stack([_embeddings(rng, V, D, n, regime, 10.0) for _ in range(batch)])
        T = np.stack([_embeddings(rng, V, D, n, regime, 1.0) for _ in range(batch)])
        tmax = max(np.sum(t ** 2) for tb in T for t in tb)  # the cheap bound: nothing factored
        op = VideoGCRF(xp.asarray(S.reshape(batch, V, D, L, H, W).astype(dtype)),
                       xp.asarray(T.reshape(batch, V, D, L, H, W).astype(dtype)), 1.0 + 1.5 * tmax)
        b = xp.asarray(rng.standard_normal((batch, V, L, H, W)).astype(dtype))
    else:
        raise ValueError(form)
    return op, b


#: ``--part``: the factorising forms (low-rank, video), the sparse forms, or both
PARTS = ("all", "factorising", "sparse")


def count_steps(*, quick: bool = False, part: str = "all", **_) -> int:
    """How many steps :func:`run` announces to its ``progress`` callback (one per case)."""
    factorising = len(FORMS) * len(REGIMES) if part in ("all", "factorising") else 0
    sparse = len(SPARSE_CASES) * len(_sparse_sizes(quick)) if part in ("all", "sparse") else 0
    return (factorising + sparse) * len(DTYPES)


def _sparse_sizes(quick):
    return ("small",) if quick else ("medium", "large")


def sparse_methods(form, neighbourhood, size):
    """The methods timed on one sparse case, ``"auto"`` first."""
    methods = ["auto", "cg", "pcg", "gmres", "gauss_seidel", "jacobi", "direct"]
    if form == "grid" and neighbourhood == 4:
        methods.append("reduced_cg")
    if form == "grid_potts":
        methods.append("potts_split")
    if size == "large":
        methods = [m for m in methods if m not in LARGE_SKIPPED]
    return methods


def _sparse_rhs(op, b, dtype, xp):
    if isinstance(b, list):  # multires: levels concatenated, level 0 first
        b = np.concatenate([np.asarray(x).reshape(-1) for x in b])
    return xp.asarray(np.asarray(b, dtype=dtype).reshape(op.vector_shape))


def sparse_rows(*, quick=False, xp=np, progress=None, seed=0):
    """One row per (sparse case, size, dtype): ``auto`` against the fastest other method."""
    rows = []
    for size in _sparse_sizes(quick):
        repeats = 1 if quick else (2 if size == "large" else 3)
        for form, index in SPARSE_CASES:
            params, b, meta = problems.make_params(form, index, seed=seed, **SPARSE_SIZES[size])
            nb = meta.get("neighbourhood", params.get("neighbourhood"))
            methods = sparse_methods(form, nb, size)
            for dtype in DTYPES:
                best = {m: np.inf for m in methods}
                info = {}
                for _ in range(repeats):
                    for method in methods:  # interleaved, each on a fresh operator
                        op = problems.build_operator(form, params, dtype=dtype, xp=xp)
                        rhs = _sparse_rhs(op, b, dtype, xp)
                        t0 = time.perf_counter()
                        res = gcrflinalg.solve(op, rhs, method=method)
                        gcrflinalg.backend.synchronize(xp)
                        best[method] = min(best[method], time.perf_counter() - t0)
                        info[method] = (res.method, int(np.max(res.iterations)), bool(np.all(res.converged)))
                others = [m for m in methods if m != "auto" and info[m][2]]
                peer = min(others, key=best.get)
                ratio = best["auto"] / best[peer]
                dims = "x".join(str(d) for d in meta.get("image_shape", ())) or "-"
                times = ", ".join(f"{m}{'' if info[m][0] in (m, 'cg') else ' [' + info[m][0] + ']'} "
                                  f"{best[m] * 1e3:.3g}" for m in methods if m != "auto")
                rows.append({
                    "entry": ENTRY,
                    "case": (f"{form}, {nb}-neighbourhood, {size} {dims} x {meta['num_labels']} "
                             f"(N = {op.size}), {np.dtype(dtype).name}"),
                    "what": f"auto ran {info['auto'][0]} ({info['auto'][1]} it); others (ms): {times}",
                    "time_s": best["auto"], "peer": f"{peer} (fastest other)", "peer_time_s": best[peer],
                    "ratio": ratio, "target": f"within {TARGET}x", "met": None if quick else bool(ratio <= TARGET),
                    "converged": all(v[2] for k, v in info.items() if k in ("auto", peer)),
                    "auto_ran": info["auto"][0],
                    "method_times_s": {m: best[m] for m in methods},
                    "method_converged": {m: info[m][2] for m in methods}})
                if progress is not None:
                    progress(f"auto: {form} {nb}-nb, {size}, {np.dtype(dtype).name}")
    return rows


def run(*, quick: bool = False, backend: str = "cpu", progress=None, seed: int = 0,
        part: str = "all") -> list[dict]:
    """One row per (form, spectrum, dtype): ``auto`` against the better of ``cg`` and ``direct``;
    then the rows of :func:`sparse_rows`.

    ``quick``: small sizes and one repeat; the target is then not judged.  ``part``: one of
    :data:`PARTS`.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}; got {part!r}")
    xp = array_module(backend)
    if part == "sparse":
        return sparse_rows(quick=quick, xp=xp, progress=progress, seed=seed)
    repeats = 1 if quick else 3
    rows = []
    for form in FORMS:
        for regime in REGIMES:
            for dtype in DTYPES:
                best = {m: np.inf for m in ("auto", "cg", "direct")}
                info = {}
                for rep in range(repeats):
                    for method in best:  # interleaved, each on a fresh operator
                        op, b = make_case(form, regime, dtype, seed=seed + rep, quick=quick, xp=xp)
                        t0 = time.perf_counter()
                        res = gcrflinalg.solve(op, b, method=method)
                        gcrflinalg.backend.synchronize(xp)
                        best[method] = min(best[method], time.perf_counter() - t0)
                        info[method] = (res.method, int(res.matvecs), bool(np.all(res.converged)))
                peer = min(("cg", "direct"), key=best.get)
                ratio = best["auto"] / best[peer]
                rows.append({
                    "entry": ENTRY, "case": f"{form}, {regime} spectrum, {np.dtype(dtype).name}",
                    "what": f"auto ran {info['auto'][0]} ({info['auto'][1]} products; cg took "
                            f"{info['cg'][1]})", "time_s": best["auto"], "peer": f"{peer} (the better)",
                    "peer_time_s": best[peer], "ratio": ratio, "target": f"within {TARGET}x",
                    "met": None if quick else bool(ratio <= TARGET),
                    "converged": all(v[2] for v in info.values()),
                    "cg_time_s": best["cg"], "direct_time_s": best["direct"]})
                if progress is not None:
                    progress(f"auto: {form}, {regime}, {np.dtype(dtype).name}")
    if part == "all":
        rows += sparse_rows(quick=quick, xp=xp, progress=progress, seed=seed)
    return rows


def main(argv=None) -> int:
    """``python -m studies.timing_auto``: the rows above, the timing files and a short summary."""
    import studies.timing_auto as module

    return family_main(
        "timing_auto", module, argv,
        description="Timing of method='auto' against 'cg' and 'direct' on the low-rank and video forms "
                    "(flat and decaying embedding spectra), and against every method of the grid, Potts "
                    "grid and multi-resolution forms (built-in problems, medium and large), float32 and "
                    "float64, fresh operators.  Writes timing.md (the table), timing.json, timing.csv and "
                    "timing_auto.png.",
        quick_help="15 x 15 pixels, 4 labels, D = 16, small built-in sparse problems, one repeat: seconds; "
                   "the target is then not judged",
        add_arguments=lambda parser: parser.add_argument(
            "--part", choices=PARTS, default="all",
            help="the factorising forms (low-rank, video), the sparse forms (grid, Potts grid, "
                 "multi-resolution), or both (default)"),
        run_kwargs=lambda args: dict(seed=args.seed, part=args.part))


if __name__ == "__main__":
    sys.exit(main())
