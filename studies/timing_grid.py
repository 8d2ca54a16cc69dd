"""Timing of the grid G-CRFs on a full-size dense-labelling problem.

``python -m studies.timing_grid [--quick] [--backend cpu|gpu] [--out DIR]`` prints a short summary
and writes the table (``timing.md``), ``timing.json``, ``timing.csv`` and ``timing_grid.png``;
:func:`run` returns its rows for :mod:`studies.timing`.

The problem: an ``85 x 109`` image, ``L = 21`` labels, 4-connected, ``lam = 10``, solved to
``rtol = 1e-6``.  Pairwise terms are contrast sensitive, as a network would predict them:
``c_pq = exp(-|I_p - I_q|^2 / (2 sigma^2))`` from the sample photograph that ships with Matplotlib
(``grace_hopper.jpg``, block-averaged to ``85 x 109`` grey levels; a smooth random field when it is
missing), ``sigma^2`` the mean squared neighbour difference.

- Potts form: ``weights[k, p] = 0.08 c_pq``.  Then ``|lambda(W)| <= 4 * 0.08``, so the sum system
  ``lam I + 20 W`` has eigenvalues in ``[3.6, 16.4]``: positive definite and well conditioned.
- General form: ``pairwise[k, :, :, p] = c_pq (0.08 (1 1^T - I) + 0.02 R_k)`` with a random
  compatibility ``R_k`` (standard normal entries, one per offset, clipped to ``[-2, 2]``): the
  Potts pattern plus label-pair specific terms.  Its Gershgorin bound stays below ``lam`` (checked
  and printed), so ``M`` is positive definite.

Rows measured (best of 5 repeats after a warm-up, so Numba compilation is excluded; the machine
may be shared, so every row takes its best run):

1. SciPy ``cg`` on the assembled float64 CSR matrix — the reference;
2. the general form solved matrix-free by :func:`gcrflinalg.solve` in float64 and float32, the
   relative residual always measured in float64 against the CSR matrix, with
   ``method="cg"`` (plain CG on ``M``: 12 iterations here plus the final true-residual product,
   13 structured products streaming the blocks once each) and ``method="reduced_cg"`` (CG on the
   red-black reduced system ``lam^2 I - C C^T``: 6 iterations, each a product with ``C^T`` and
   one with ``C`` on the colour-ordered blocks, plus the right-hand side, the back-substitution
   and the true residual of the full system); the colour-ordered blocks are built once per
   operator (timed in their own row, with the first solve that includes them).  The best path
   is the fastest that meets ``rtol``; target: at least 6x faster than (1);
3. the Potts form by its ``L + 1`` split (``method="cg"``), float64 and float32; target: at least
   5x faster than the general form's best path;
4. one general product in float64 and float32 against the memory-bandwidth floor: the bytes of the
   stored blocks plus three vectors (read ``v``, read and write ``out``) divided by the copy
   bandwidth (``2 * nbytes / t`` of ``copyto`` of a 256 MiB array on the operators' device,
   measured just before), the products timed back to back as in a solve; target: within 2x;
5. CSR assembly: first image of a size, and a new image of a seen size (cached index pattern);
6. the positive-definiteness checks.
"""
from __future__ import annotations

import os
import sys
import time

# OpenMP threads that spin while waiting lose their core on a busy machine; sleeping ones cost
# microseconds per parallel product.  (Set before Numba starts its thread pool.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import gcrflinalg
from gcrflinalg import GridGCRF, GridPottsGCRF, to_host

from studies._common import array_module, best_time, family_main

__all__ = ["run", "make_problem", "count_steps", "main"]

ENTRY = "grid"


def _image(height, width, rng):
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            import matplotlib.image as mpimg

            img = mpimg.imread(f, format="jpg").astype(np.float64).mean(axis=2)
        # block-average to (height, width)
        rows = np.linspace(0, img.shape[0], height + 1).astype(int)
        cols = np.linspace(0, img.shape[1], width + 1).astype(int)
        img = np.add.reduceat(np.add.reduceat(img, rows[:-1], axis=0), cols[:-1], axis=1)
        img /= np.outer(np.diff(rows), np.diff(cols))
        return img / 255.0
    except Exception:  # no sample data: a smooth random field
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(rng.standard_normal((height, width)), 3.0)


def make_problem(height=85, width=109, num_labels=21, *, random_state=0):
    """Contrast-sensitive Potts weights ``(2, H, W)``, general blocks ``(2, L, L, H, W)`` and unary
    scores ``b`` ``(L, H, W)``, all float64 (see the module docstring)."""
    rng = np.random.default_rng(random_state)
    img = _image(height, width, rng)
    diffs = [np.zeros((height, width)), np.zeros((height, width))]
    diffs[0][:, :-1] = img[:, 1:] - img[:, :-1]  # offset (0, 1)
    diffs[1][:-1, :] = img[1:, :] - img[:-1, :]  # offset (1, 0)
    sigma2 = np.mean(np.concatenate([diffs[0][:, :-1].ravel(), diffs[1][:-1, :].ravel()]) ** 2) + 1e-12
    contrast = np.stack([np.exp(-d ** 2 / (2 * sigma2)) for d in diffs])  # (2, H, W)
    weights = 0.08 * contrast
    L = num_labels
    potts = 0.08 * (np.ones((L, L)) - np.eye(L))
    compat = potts[None] + 0.02 * np.clip(rng.standard_normal((2, L, L)), -2, 2)
    pairwise = contrast[:, None, None] * compat[:, :, :, None, None]
    b = rng.standard_normal((L, height, width))
    return weights, pairwise, b


def _best_time(fn, xp, repeats):
    """``(best seconds, last result)`` of ``repeats`` calls after a warm-up (compilation, caches)."""
    return best_time(fn, repeats=repeats, xp=xp, return_result=True)


#: image sizes whose CSR pattern this process has built (the "first image of a size" row needs a new one)
_CSR_SIZES_SEEN = set()

#: progress steps of :func:`run` (the calls of its progress callback)
STEPS = 9


def count_steps(*, quick: bool = False, **_) -> int:
    """How many steps :func:`run` announces to its ``progress`` callback."""
    return STEPS


def run(*, quick: bool = False, backend: str = "cpu", progress=None, seed: int = 0) -> list[dict]:
    """Measure the rows listed in the module docstring.

    Parameters
    ----------
    quick : bool
        A ``30 x 40``, ``L = 5`` problem and fewer repeats (seconds, for tests); the targets are
        then not judged (``met`` is None).
    backend : {"cpu", "gpu"}
        Where the toolkit's operators live (the SciPy reference always runs on the CPU).
    progress : callable, optional
        Called with a short message before each of the :data:`STEPS` steps.
    seed : int
        Seeds the random label compatibilities and unaries.

    Returns
    -------
    list of dict
        One row per measurement: ``entry, case, what, time_s, peer, ratio, target, met`` and
        extras (``iterations``, ``rel_residual``, ...).
    """
    import scipy.sparse.linalg as spla

    say = (lambda msg: progress(f"grid: {msg}")) if progress else (lambda msg: None)
    if backend not in ("cpu", "gpu"):
        raise ValueError(f"backend must be 'cpu' or 'gpu'; got {backend!r}")
    xp = array_module(backend)
    H, W, L = (30, 40, 5) if quick else (85, 109, 21)
    repeats = 2 if quick else 5
    lam, rtol = 10.0, 1e-6
    case = f"{H}x{W} L={L} 4-conn lam={lam:g} rtol={rtol:g} ({backend})"
    weights, pairwise, b = make_problem(H, W, L, random_state=seed)
    rows = []

    def row(what, t, peer=None, ratio=None, target=None, met=None, **extra):
        if quick and target is not None:  # the targets are stated for the full-size problem
            target, met = f"{target} (full size only)", None
        rows.append(dict(entry=ENTRY, case=case, what=what, time_s=float(t), peer=peer,
                         ratio=None if ratio is None else float(ratio), target=target,
                         met=None if met is None else bool(met), **extra))

    # ---- CSR assembly (cached pattern) and the SciPy reference.  The pattern is cached per size, so
    # the first-image row times an image of a size this process has not assembled yet (the problem's
    # size the first time, else a column wider)
    say("assembling CSR")
    extra = 0
    while (H, W + extra, L) in _CSR_SIZES_SEEN:
        extra += 1
    _CSR_SIZES_SEEN.add((H, W + extra, L))
    _, pw_new, _ = make_problem(H, W + extra, L, random_state=seed) if extra else (None, pairwise, None)
    t0 = time.perf_counter()
    A_new = GridGCRF(pw_new, lam).to_sparse()
    t_first = time.perf_counter() - t0
    A = GridGCRF(pairwise, lam).to_sparse()
    other = GridGCRF(pw_new * 0.99, lam)
    t_seen, _ = _best_time(lambda: other.to_sparse(), np, repeats)
    row(f"CSR assembly, first image of this size (pattern built; {H}x{W + extra})", t_first, nnz=int(A_new.nnz))
    row("CSR assembly, new image of a seen size (values only)", t_seen, peer="first image of the size",
        ratio=t_first / t_seen, peer_time_s=t_first)
    bflat = b.reshape(-1)
    bnorm = np.linalg.norm(bflat)

    def rel_res(x):
        x = to_host(x).reshape(-1).astype(np.float64)
        return float(np.linalg.norm(bflat - A @ x) / bnorm)

    say("scipy cg on CSR (float64)")
    iters = [0]

    def scipy_cg():
        iters[0] = 0

        def cb(_):
            iters[0] += 1

        x, info = spla.cg(A, bflat, rtol=rtol, atol=0.0, callback=cb)
        return x

    t_ref, x_ref = _best_time(scipy_cg, np, repeats)
    row("SciPy cg, assembled CSR, float64", t_ref, iterations=iters[0], rel_residual=rel_res(x_ref))
    peer = dict(peer_time_s=t_ref)
    ref_name = "SciPy cg on CSR (float64)"

    # ---- general form, matrix-free: plain CG on M and CG on the red-black reduced system
    general = {}
    for method in ("cg", "reduced_cg"):
        for dtype in (np.float64, np.float32):
            name = np.dtype(dtype).name
            say(f"general form {method} ({name})")
            op_pairwise = xp.asarray(pairwise.astype(dtype))
            op = GridGCRF(op_pairwise, lam)
            bd = xp.asarray(b.astype(dtype))
            if method == "reduced_cg":  # the colour-ordered blocks, built once per (new) operator
                t_blocks, _ = _best_time(lambda: GridGCRF(op_pairwise, lam).red_black_layout(), xp, repeats)
            else:
                t_check, _ = _best_time(op.check_positive_definite, xp, 1)
            t, res = _best_time(lambda: gcrflinalg.solve(op, bd, method=method, rtol=rtol, check_pd=False),
                                xp, repeats)
            rr = rel_res(res.x)
            general[(method, name)] = (t, rr)
            label = "matrix-free cg" if method == "cg" else "red-black reduced cg"
            row(f"general form, {label}, {name}", t, peer=ref_name, ratio=t_ref / t,
                iterations=int(res.iterations), rel_residual=rr, **peer)
            if method == "reduced_cg":
                row(f"general form, colour-ordered blocks for the reduction, {name} (once per operator)",
                    t_blocks, peer="first reduced solve incl. blocks", ratio=None,
                    first_solve_s=t_blocks + t, first_solve_ratio=t_ref / (t_blocks + t))
            if method == "cg" and dtype == np.float64:
                row("general form, positive-definiteness check (Gershgorin)", t_check,
                    gershgorin_bound=float(to_host(op.gershgorin_bound())), lam=lam)
    ok = {k: v for k, v in general.items() if v[1] <= rtol * 1.0001} or general
    best_key = min(ok, key=lambda k: ok[k][0])
    t_gen = general[best_key][0]
    best_g = f"{best_key[0]}, {best_key[1]}"
    row(f"general form, best path ({best_g})", t_gen, peer=ref_name, ratio=t_ref / t_gen,
        target=">= 6x faster than SciPy cg on CSR", met=t_ref / t_gen >= 6, rel_residual=general[best_key][1],
        **peer)

    # ---- Potts form, L + 1 split
    potts = {}
    A_potts = GridPottsGCRF(weights, lam, L).to_sparse()

    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        say(f"Potts form split cg ({name})")
        op = GridPottsGCRF(xp.asarray(weights.astype(dtype)), lam, L)
        bd = xp.asarray(b.astype(dtype))
        t, res = _best_time(lambda: gcrflinalg.solve(op, bd, method="cg", rtol=rtol, check_pd=False), xp,
                            repeats)
        x = to_host(res.x).reshape(-1).astype(np.float64)
        rr = float(np.linalg.norm(bflat - A_potts @ x) / bnorm)
        potts[name] = (t, rr)
        row(f"Potts form, L+1 split cg, {name}", t, peer=f"general form, best path ({best_g})",
            ratio=t_gen / t, iterations=int(res.iterations), rel_residual=rr, peer_time_s=t_gen)
        if dtype == np.float64:
            t_check, _ = _best_time(op.check_positive_definite, xp, 1)
            row("Potts form, positive-definiteness check (Gershgorin settles it here)", t_check, lam=lam)
            t_eig, (lo, hi) = _best_time(op.weight_extreme_eigenvalues, xp, 1)
            row("Potts form, extreme eigenvalues of W (Lanczos, the exact check)", t_eig,
                lambda_min_W=lo, lambda_max_W=hi, bound=max(hi, -(L - 1) * lo), lam=lam)
    ok = {k: v for k, v in potts.items() if v[1] <= rtol * 1.0001} or potts
    best_p = min(ok, key=lambda k: ok[k][0])
    t_potts = potts[best_p][0]
    row(f"Potts form, best path (L+1 split cg, {best_p})", t_potts,
        peer=f"general form, best path ({best_g})", ratio=t_gen / t_potts,
        target=">= 5x faster than the general form", met=t_gen / t_potts >= 5, rel_residual=potts[best_p][1],
        peer_time_s=t_gen)

    # ---- per-product time against the memory-bandwidth floor.  Products run back to back, as in a
    # solve; the copy bandwidth is measured just before each product (the bandwidth a shared machine
    # gives varies; timing copy and product alternately would leave every product a cold cache)
    say("copy bandwidth and products")
    copy_bytes = 64 << 20 if quick else 256 << 20
    src = xp.ones(copy_bytes // 8)
    dst = xp.empty_like(src)

    def bandwidth():
        t_copy, _ = _best_time(lambda: xp.copyto(dst, src), xp, 5)
        return 2 * src.nbytes / t_copy, t_copy

    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        op = GridGCRF(xp.asarray(pairwise.astype(dtype)), lam)
        opp = GridPottsGCRF(xp.asarray(weights.astype(dtype)), lam, L)
        v = xp.asarray(b.astype(dtype))
        bw, t_copy = bandwidth()
        if dtype == np.float64:
            row(f"memory copy of {copy_bytes >> 20} MiB ({xp.__name__}.copyto)", t_copy,
                bandwidth_bytes_per_s=bw)
        t, _ = _best_time(lambda: op.matvec(v), xp, 5 * repeats)
        nbytes = op.pairwise.nbytes + 3 * v.nbytes
        floor = nbytes / bw
        row(f"general product M v, {name}", t, peer="memory-bandwidth floor", ratio=t / floor,
            target="<= 2x the floor", met=t / floor <= 2, floor_s=floor, bytes=nbytes,
            bandwidth_bytes_per_s=bw, peer_time_s=floor)
        tp, _ = _best_time(lambda: opp.matvec(v), xp, 5 * repeats)
        nbytes_p = opp.weights.nbytes + 3 * v.nbytes
        row(f"Potts product M v, {name}", tp, peer="memory-bandwidth floor", ratio=tp / (nbytes_p / bw),
            floor_s=nbytes_p / bw, bytes=nbytes_p, peer_time_s=nbytes_p / bw)
    return rows


def main(argv=None) -> int:
    """``python -m studies.timing_grid``: the rows above, the timing files and a short summary."""
    import studies.timing_grid as module

    return family_main(
        "timing_grid", module, argv,
        description="Timing of the grid G-CRFs (general and Potts, 85 x 109 pixels, 21 labels) against "
                    "SciPy cg on the assembled CSR matrix, the products against the memory-bandwidth floor, "
                    "CSR assembly and the positive-definiteness checks.  Writes timing.md (the table), "
                    "timing.json, timing.csv and timing_grid.png.",
        quick_help="a 30 x 40 problem with 5 labels (seconds); targets are then not judged",
        run_kwargs=lambda args: dict(seed=args.seed))


if __name__ == "__main__":
    sys.exit(main())
