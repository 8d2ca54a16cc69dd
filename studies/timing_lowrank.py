"""Timing of the dense low-rank G-CRFs (docs/design.md 3.4 general, 3.5 Potts).

For ``H x W = 41 x 41`` (a 321 x 321 image at stride 8), ``L = 21`` and ``D`` in
{32, 64, 128, 256, 512}, and for the image-size sweep 256..2048 (stride 8) at ``D = 128``, it times
on the same system:

* SciPy ``cg`` on a ``LinearOperator`` with the naive product: ``E^T (E v) + lam v`` for 3.4, and
  for 3.5 the literal block transcription ``q_l = lam v_l + sum_{m != l} psi^T (psi v_m)`` with its
  ``L (L-1)`` label-pair products, O(L^2 P D);
* this toolkit's CG (:func:`gcrflinalg.solve`, ``method="cg"``) on the structured operator;
* the exact direct solve (``method="direct"``): the forward solve on a fresh operator (factorisation
  included), and the backward (adjoint) solve reusing the cached factor, with its default
  true-residual check (the target's row) and without it (``check_residual=False``, for reference).

Problems: Gaussian embeddings (fixed random generator) with a decaying spectrum (embedding
dimension ``d`` scaled by ``1/sqrt(d+1)``, normalised so that each pixel's embedding has unit
expected squared norm); 3.4 uses ``lam = 1``, 3.5 ``lam = 1.1 ||psi||_2^2`` (10 % above its
positive-definiteness bound).  Float64, ``rtol = 1e-6`` for the iterative solvers.  Times are the
best of up to 5 repeats (within 3 s) after a warm-up (a warm-up above 3 s is itself the
measurement).  Targets (at ``D = 128``): the direct solve at least 2x faster than SciPy ``cg`` with
relative residual below 1e-10; the Potts direct solve at least 5x faster than the general one; the
backward solve at most 0.3x the forward solve.

Run alone: ``python -m studies.timing_lowrank [--quick] [--backend cpu|gpu] [--out DIR] [--dims D ...]
[--images S ...]``: a short summary on the terminal; ``timing.md`` (the table), ``timing.json``,
``timing.csv`` and ``timing_lowrank.png`` in ``--out``.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from gcrflinalg import LowRankGCRF, LowRankPottsGCRF, adjoint_solve, solve, to_host

from studies._common import array_module, best_time, family_main

ENTRY = "lowrank"
RTOL = 1e-6
SCIPY = "scipy cg (naive LinearOperator)"
TOOLKIT_CG = "toolkit cg"
DIRECT = "direct forward (factor + solve)"
BACKWARD = "direct backward (reused factor)"
BACKWARD_UNCHECKED = "direct backward, check_residual=False"
POTTS_VS_GENERAL = "direct forward: Potts vs general"
#: the naive O(L^2 P D) Potts product is not run above this many pixels (it would take minutes)
NAIVE_POTTS_MAX_PIXELS = 64 * 64


def _embeddings(rng, shape, d_axis_len):
    """Gaussian embeddings with axis 0 (length D) scaled by ``1/sqrt(d+1)``, unit expected norm."""
    scale = 1.0 / np.sqrt(np.arange(1, d_axis_len + 1))
    scale /= np.sqrt(np.sum(scale ** 2))
    return rng.standard_normal(shape) * scale.reshape((-1,) + (1,) * (len(shape) - 1))


def _read_only(arr):
    """The study's own embeddings, frozen: every operator built on them views them instead of taking
    its own copy (docs/guarantees.md), as the many fresh operators of a measurement would otherwise
    each hold one (several GB at the largest image)."""
    if isinstance(arr, np.ndarray):
        arr.flags.writeable = False
    return arr


def make_problem(form, d, h, w, n_labels, rng, xp=np):
    """``(make_operator, naive_matvec, b, lam)`` for one system of ``form`` in {"general", "potts"}."""
    b = xp.asarray(rng.standard_normal((n_labels, h, w)))
    if form == "general":
        emb = _read_only(xp.asarray(_embeddings(rng, (d, n_labels, h, w), d)))
        lam = 1.0
        e2 = emb.reshape(d, -1)

        def naive(v):
            v = v.reshape(-1)
            return e2.T @ (e2 @ v) + lam * v

        return (lambda: LowRankGCRF(emb, lam)), naive, b, lam
    psi = _read_only(xp.asarray(_embeddings(rng, (d, h, w), d)))
    p2 = psi.reshape(d, -1)
    lam = 1.1 * float(to_host(xp.linalg.eigvalsh(p2 @ p2.T))[-1])

    def naive_potts(v):
        v = v.reshape(n_labels, -1)
        out = lam * v
        for l in range(n_labels):
            for m in range(n_labels):
                if m != l:
                    out[l] += p2.T @ (p2 @ v[m])
        return out.reshape(-1)

    return (lambda: LowRankPottsGCRF(psi, lam, n_labels)), naive_potts, b, lam


def _best(fn, repeats, xp, budget_s=3.0):
    """Best wall time of up to ``repeats`` calls of ``fn()`` after one warm-up call.

    Repeats stop once they have used ``budget_s`` seconds; a warm-up longer than ``budget_s`` is
    itself the measurement.  Returns ``(seconds, last result)``.
    """
    return best_time(fn, repeats=repeats, xp=xp, budget_s=budget_s, return_result=True)


def _scipy_cg(naive, n, b, xp):
    if xp is np:
        from scipy.sparse.linalg import LinearOperator, cg
    else:  # pragma: no cover - GPU only
        from cupyx.scipy.sparse.linalg import LinearOperator, cg
    lin = LinearOperator((n, n), matvec=naive, dtype=np.float64)
    count = [0]

    def callback(_):
        count[0] += 1

    def run():
        count[0] = 0
        try:
            x, info = cg(lin, b.reshape(-1), rtol=RTOL, maxiter=10 * n, callback=callback)
        except TypeError:  # pragma: no cover - cupyx spells it tol
            x, info = cg(lin, b.reshape(-1), tol=RTOL, maxiter=10 * n, callback=callback)
        return x, count[0]

    return run


def _rel_residual(op, x, b):
    r = b.reshape(-1) - op.matvec(x.reshape(-1))
    return float(to_host(op.xp.linalg.norm(r) / op.xp.linalg.norm(b)))


def _measure_case(form, d, h, w, n_labels, rng, xp, repeats, naive_ok, case, targets):
    make_op, naive, b, lam = make_problem(form, d, h, w, n_labels, rng, xp)
    op = make_op()
    n = op.size
    rows = []
    base = dict(entry=ENTRY, case=case, form=form, D=d, H=h, W=w, L=n_labels, lam=lam)

    t_scipy = None
    if naive_ok:
        t_scipy, (x, its) = _best(_scipy_cg(naive, n, b, xp), repeats, xp)
        rows.append(dict(base, what=SCIPY, time_s=t_scipy, peer=None, ratio=None, target=None, met=None,
                         iterations=its, rel_residual=_rel_residual(op, x, b)))

    t_cg, res = _best(lambda: solve(op, b, method="cg", rtol=RTOL, maxiter=10 * n), repeats, xp)
    rows.append(dict(base, what=TOOLKIT_CG, time_s=t_cg, peer=SCIPY if t_scipy else None,
                     ratio=(t_scipy / t_cg) if t_scipy else None, target=None, met=None, peer_time_s=t_scipy,
                     iterations=int(res.iterations), rel_residual=float(res.relative_residual)))

    fresh = [make_op() for _ in range(repeats + 1)]  # a factor-free operator for every call

    def forward():
        return solve(fresh.pop(), b, method="direct")

    t_fwd, res = _best(forward, repeats, xp)
    rel = float(res.relative_residual)
    ratio = (t_scipy / t_fwd) if t_scipy else None
    met = (ratio >= 2.0 and rel < 1e-10) if (targets and ratio is not None) else None
    rows.append(dict(base, what=DIRECT, time_s=t_fwd, peer=SCIPY if t_scipy else None, ratio=ratio,
                     peer_time_s=t_scipy,
                     target="scipy/direct >= 2, rel_residual < 1e-10" if targets else None, met=met,
                     iterations=1, rel_residual=rel))

    grad_x = xp.asarray(rng.standard_normal(b.shape))
    op.factorize()
    t_bwd, res = _best(lambda: adjoint_solve(op, grad_x, method="direct"), repeats, xp)
    ratio_b = t_bwd / t_fwd
    rows.append(dict(base, what=BACKWARD, time_s=t_bwd, peer=DIRECT, ratio=ratio_b, peer_time_s=t_fwd,
                     target="backward/forward <= 0.3" if targets else None,
                     met=(ratio_b <= 0.3) if targets else None,
                     iterations=1, rel_residual=float(res.relative_residual)))
    t_nc, res = _best(lambda: adjoint_solve(op, grad_x, method="direct", check_residual=False), repeats, xp)
    rows.append(dict(base, what=BACKWARD_UNCHECKED, time_s=t_nc, peer=DIRECT, ratio=t_nc / t_fwd, target=None,
                     peer_time_s=t_fwd,
                     met=None, iterations=1, rel_residual=_rel_residual(op, res.x, grad_x)))
    return rows


def _potts_vs_general(rows, case_of, targets_at):
    """One row per case comparing the direct forward times of the two forms."""
    out = []
    direct = {(r["case_key"], r["form"]): r for r in rows if r["what"] == DIRECT}
    for (key, form), r in direct.items():
        if form != "potts" or (key, "general") not in direct:
            continue
        g = direct[(key, "general")]
        ratio = g["time_s"] / r["time_s"]
        targets = key in targets_at
        out.append(dict(entry=ENTRY, case="potts vs general " + case_of[key], what=POTTS_VS_GENERAL, time_s=r["time_s"],
                        peer="general " + DIRECT, ratio=ratio, peer_time_s=g["time_s"],
                        target="general/potts >= 5" if targets else None,
                        met=(ratio >= 5.0) if targets else None, form="potts", case_key=key,
                        iterations=1, rel_residual=r["rel_residual"],
                        D=r["D"], H=r["H"], W=r["W"], L=r["L"]))
    return out


def _sizes(quick, only_dims=None, only_images=None):
    if quick:
        n_labels, side, dims, sweep_d, images, target_d, repeats = 5, 9, (8, 16), 16, (32, 64), None, 1
    else:
        n_labels, side, dims, sweep_d, images, target_d, repeats = 21, 41, (32, 64, 128, 256, 512), 128, \
            (256, 512, 1024, 2048), 128, 5
    dims = dims if only_dims is None else tuple(only_dims)
    images = images if only_images is None else tuple(only_images)
    return n_labels, side, dims, sweep_d, images, target_d, repeats


def count_steps(*, quick: bool = False, only_dims=None, only_images=None, **_) -> int:
    """How many steps :func:`run` announces to its ``progress`` callback (one per case and form)."""
    _, _, dims, _, images, _, _ = _sizes(quick, only_dims, only_images)
    return 2 * (len(dims) + len(images)) + 1


def run(*, quick: bool = False, backend: str = "cpu", progress=None, only_dims=None,
        only_images=None, seed: int = 0) -> list[dict]:
    """Measure every row of the low-rank timing entry.

    Parameters
    ----------
    quick : bool
        Small sizes (``9 x 9``, ``L = 5``, ``D`` in {8, 16}, images 32 and 64 at ``D = 16``), a few
        seconds; targets are then not evaluated.
    backend : {"cpu", "gpu"}
        Where the arrays live (the SciPy baseline runs on the same device through ``cupyx`` on GPU).
    progress : callable, optional
        Called with a short text before each case.
    only_dims, only_images : sequence of int, optional
        Restrict the ``D`` values at ``41 x 41`` and the image sizes of the sweep (full mode).
    seed : int
        Added to the random generator's seed (0: the problems of the README's table).

    Returns
    -------
    list of dict
        One row per measurement with ``entry, case, what, time_s, peer, ratio, target, met`` and
        ``iterations, rel_residual, form, D, H, W, L``.
    """
    if backend not in ("cpu", "gpu"):
        raise ValueError(f"backend must be 'cpu' or 'gpu'; got {backend!r}")
    xp = array_module(backend)
    rng = np.random.default_rng(20261124 + int(seed))
    n_labels, side, dims, sweep_d, images, target_d, repeats = _sizes(quick, only_dims, only_images)
    cases = [(f"D={d} HxW={side}x{side} L={n_labels}", d, side, side, d == target_d) for d in dims]
    for s in images:
        h = math.ceil(s / 8)
        cases.append((f"D={sweep_d} image {s}x{s} (HxW={h}x{h}) L={n_labels}", sweep_d, h, h, False))
    rows, case_of, targets_at = [], {}, set()
    for key, d, h, w, targets in cases:
        for form in ("general", "potts"):
            case = f"{form} {key}"
            case_of[key] = key
            if targets:
                targets_at.add(key)
            if progress is not None:
                progress(f"lowrank: {case}")
            naive_ok = form == "general" or h * w <= NAIVE_POTTS_MAX_PIXELS
            new = _measure_case(form, d, h, w, n_labels, rng, xp, repeats, naive_ok, case, targets)
            for r in new:
                r["case_key"] = key
            rows.extend(new)
    rows.extend(_potts_vs_general(rows, case_of, targets_at))
    for r in rows:
        r.pop("case_key", None)
    if backend == "cpu":
        # flat spectrum (i.i.d. E / sqrt(D)): a fresh operator's default solve against SciPy's cg on
        # lam I + E^T E, same run (studies.timing_overhead)
        from studies.timing_overhead import flat_spectrum_vs_scipy

        if progress is not None:
            progress("lowrank: flat spectrum vs SciPy cg")
        row = flat_spectrum_vs_scipy(quick=quick, repeats=repeats, seed=seed)
        row["entry"] = ENTRY
        rows.append(row)
    return rows


def _arguments(parser):
    parser.add_argument("--dims", type=int, nargs="+", metavar="D", help="only these D at 41 x 41")
    parser.add_argument("--images", type=int, nargs="+", metavar="S", help="only these image sizes in the sweep")


def main(argv=None) -> int:
    """``python -m studies.timing_lowrank``: the rows above, the timing files and a short summary."""
    import studies.timing_lowrank as module

    return family_main(
        "timing_lowrank", module, argv,
        description="Timing of the dense low-rank G-CRFs (general and Potts): this toolkit's cg and exact "
                    "direct solves (forward and backward) against SciPy cg on the naive product, for "
                    "D = 32..512 and images 256..2048.  Writes timing.md (the table), timing.json, "
                    "timing.csv and timing_lowrank.png.",
        quick_help="9 x 9 pixels, 5 labels, D in {8, 16}: a few seconds; targets are then not judged",
        add_arguments=_arguments,
        run_kwargs=lambda args: dict(only_dims=args.dims, only_images=args.images, seed=args.seed))


if __name__ == "__main__":
    sys.exit(main())
