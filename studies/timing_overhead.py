"""What a fresh operator adds to a default solve, per form and dtype, in products.

A network builds a new operator at every step, so the default path of a solve on a fresh operator
(construction, the parameter checks, the ``check_pd=True`` certificate and any set-up the chosen
method needs) should cost at most about one product more than the same solve on an operator that
is held and reused (docs/design.md section 6, docs/guarantees.md).  For every form and dtype this
study measures, in the same run, with writeable parameter arrays as users pass them:

- ``product``: one product ``M v`` on the held operator;
- ``held solve``: ``solve(op, b, method="auto")`` on an operator built and solved with before;
- ``fresh solve``: ``solve(Form(params, lam), b, method="auto")``, construction included;
- ``overhead``: ``(fresh - held) / product``, the fresh operator's extra cost in products, from
  wall times and from the process's CPU times (less disturbed by other processes on a shared
  machine).

The product, the held and the fresh solve and a construction are timed in turn (best of
``repeats`` each).  It also times the
low-rank form on a flat spectrum (``41 x 41`` pixels, 21 labels, ``D = 128`` i.i.d. Gaussian
``E / sqrt(D)``, ``lam = 1``, rtol ``1e-6``, float64) against SciPy's ``cg`` on the assembled
operator ``v -> lam v + E^T (E v)``: target at least 0.85x SciPy's speed (ratio >= 0.85).

Run ``python -m studies.timing_overhead`` (``--quick`` for small sizes).
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

import gcrflinalg as gl

from studies._common import family_main, paired_best

__all__ = ["run", "count_steps", "main", "FORMS"]

ENTRY = "overhead"
FORMS = ("grid", "grid_potts", "multires", "lowrank", "video")
DTYPES = ("float64", "float32")
#: forms whose "auto" caches a factorisation on the operator
FACTORISING = ("lowrank", "video")
RTOL = 1e-6
TARGET = "overhead <= about 1 product"
FLAT_TARGET = ">= 0.85x SciPy cg"


def _grid_params(quick, rng):
    from studies.timing_grid import make_problem

    H, W, L = (30, 40, 5) if quick else (85, 109, 21)
    weights, pairwise, b = make_problem(H, W, L, random_state=int(rng.integers(1 << 30)))
    return weights, pairwise, b, (H, W, L)


def problem(form, dtype, quick=False, seed=0):
    """``(build(params) -> operator, params, b, case)`` for one form; ``params`` writeable arrays."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if form in ("grid", "grid_potts", "multires"):
        weights, pairwise, b, (H, W, L) = _grid_params(quick, rng)
        b = b.astype(dt)
        if form == "grid":
            return (lambda p: gl.GridGCRF(p, 10.0)), (pairwise.astype(dt),), b, f"{H}x{W} L={L} 4-conn lam=10"
        if form == "grid_potts":
            return ((lambda w: gl.GridPottsGCRF(w, 10.0, L)), (weights.astype(dt),), b,
                    f"{H}x{W} L={L} 4-conn Potts lam=10")
        Hc, Wc = (H + 1) // 2, (W + 1) // 2
        coarse = (0.5 * pairwise[..., ::2, ::2]).astype(dt).copy()
        cross = (0.02 * rng.uniform(0, 1, (L, L, H, W))).astype(dt)  # per fine pixel

        def build(fine, coarse, cross):
            return gl.MultiResGCRF([gl.GeneralLevel(fine), gl.GeneralLevel(coarse)], [cross], 10.0)

        b = rng.standard_normal(L * (H * W + Hc * Wc)).astype(dt)  # both levels' unknowns
        return build, (pairwise.astype(dt), coarse, cross), b, f"{H}x{W} + {Hc}x{Wc} L={L} lam=10"
    if form == "lowrank":
        side, L, D = (15, 4, 16) if quick else (41, 21, 128)
        E = (rng.standard_normal((D, L, side, side)) / np.sqrt(D)).astype(dt)
        b = rng.standard_normal((L, side, side)).astype(dt)
        return (lambda e: gl.LowRankGCRF(e, 1.0)), (E,), b, f"{side}x{side} L={L} D={D} flat lam=1"
    if form == "video":
        from studies.timing_video import FULL, QUICK, _problem

        cfg = dict(QUICK if quick else FULL)
        V = 3
        S, T, b = _problem(np, cfg, V, seed=seed)
        return ((lambda s, t: gl.VideoGCRF(s, t, 1.0, neighbourhood=(1,))), (S.astype(dt), T.astype(dt)),
                b.astype(dt), f"V={V} {cfg['height']}x{cfg['width']} L={cfg['labels']} Ds=Dt={cfg['ds']} {{1}}")
    raise ValueError(f"unknown form {form!r}")


def interleaved_best(fns, *, repeats: int) -> tuple[list[float], list[float]]:
    """Best wall and best CPU (process) time of each of ``fns``, timed in turn ``repeats`` times
    after one warm-up call each: a load change on a shared machine affects all of them alike, and
    the CPU time of the process is less disturbed by other processes than the wall time."""
    for fn in fns:
        fn()
    wall = [math.inf] * len(fns)
    cpu = [math.inf] * len(fns)
    for _ in range(max(1, int(repeats))):
        for k, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k] = min(wall[k], time.perf_counter() - t0)
            cpu[k] = min(cpu[k], time.process_time() - c0)
    return wall, cpu


def measure(form, dtype, *, method="auto", quick=False, repeats=5, seed=0) -> dict:
    """Product, held solve, fresh solve and the overhead in products of one form and dtype.

    The overhead splits into the default check (construction's NaN/Inf test, fingerprint and
    certificate) and the set-up of the method ``"auto"`` runs, which a held operator keeps: on the
    4-neighbourhood general grid the red-black blocks written by the first solve's read of the
    blocks (measured as that read minus the same read without them), on the factorising forms the factorisation a fresh
    ``"auto"`` builds (the whole difference; their check is judged on the ``"cg"`` rows).  The
    target is judged on the check."""
    build, params, b, case = problem(form, dtype, quick=quick, seed=seed)
    held = build(*params)
    solve = gl.solve(held, b, method=method, rtol=RTOL)  # warm: certificate, caches, compilation
    fresh = gl.solve(build(*params), b, method=method, rtol=RTOL)
    fns = [lambda: held.matvec(b),
           lambda: gl.solve(held, b, method=method, rtol=RTOL),
           lambda: gl.solve(build(*params), b, method=method, rtol=RTOL),
           lambda: build(*params)]
    blocks = form == "grid" and solve.method == "reduced_cg"
    if blocks:  # the first solve's read of the blocks with and without writing the red-black layout
        from gcrflinalg.forms.grid.scan import scan_pairwise

        pw = np.ascontiguousarray(params[0])[None]
        layout = np.zeros_like(held.red_black_layout())  # mapped once, as the pooled buffer of a fresh operator
        fns += [lambda: scan_pairwise(pw, held.offsets, blocks=layout, build_blocks=True),
                lambda: scan_pairwise(pw, held.offsets)]
    wall, cpu = interleaved_best(fns, repeats=repeats)
    t_prod, t_held, t_fresh, t_build = wall[:4]
    overhead = (t_fresh - t_held) / t_prod
    overhead_cpu = (cpu[2] - cpu[1]) / cpu[0]
    if blocks:
        setup, setup_cpu = (wall[4] - wall[5]) / t_prod, (cpu[4] - cpu[5]) / cpu[0]
    elif form in FACTORISING and solve.method != fresh.method or "direct" in str(solve.method):
        setup, setup_cpu = overhead, overhead_cpu  # a factorisation the held operator reuses
    else:
        setup = setup_cpu = 0.0
    check, check_cpu = overhead - setup, overhead_cpu - setup_cpu
    judged = not quick and not (form in FACTORISING and setup > 0)
    return dict(entry=ENTRY, case=f"{form} {dtype} {case}", what=f"fresh operator + {method} solve vs held",
                time_s=t_fresh, peer="held operator, same solve", ratio=t_held / t_fresh,
                peer_time_s=t_held, target=TARGET if judged else None,
                met=bool(min(check, check_cpu) <= 1.5) if judged else None,
                form=form, dtype=dtype, product_s=t_prod, held_s=t_held, fresh_s=t_fresh, build_s=t_build,
                overhead_products=overhead, overhead_products_cpu=overhead_cpu,
                setup_products=setup, check_products=check, check_products_cpu=check_cpu, method=solve.method,
                fresh_method=fresh.method, iterations=int(np.max(solve.iterations)), matvecs=int(solve.matvecs),
                fresh_matvecs=int(fresh.matvecs))


def flat_spectrum_vs_scipy(*, quick=False, repeats=5, seed=0) -> dict:
    """Fresh ``LowRankGCRF`` + ``solve(method="auto")`` vs SciPy ``cg`` on ``lam I + E^T E``."""
    from scipy.sparse.linalg import LinearOperator, cg

    build, (E,), b, case = problem("lowrank", "float64", quick=quick, seed=seed)
    D = E.shape[0]
    E2 = E.reshape(D, -1)
    n = E2.shape[1]
    lin = LinearOperator((n, n), matvec=lambda v: v + E2.T @ (E2 @ v), dtype=np.float64)
    bf = b.reshape(-1)

    def scipy_cg():
        return cg(lin, bf, rtol=RTOL, atol=0.0, maxiter=10 * n)[0]

    def ours():
        return gl.solve(build(E), b, method="auto", rtol=RTOL)

    t_ours, t_peer = paired_best(ours, scipy_cg, repeats=repeats)
    res = ours()
    x_ref = scipy_cg()
    rel = lambda x: float(np.linalg.norm(bf - lin.matvec(x.reshape(-1))) / np.linalg.norm(bf))  # noqa: E731
    ratio = t_peer / t_ours
    return dict(entry=ENTRY, case=f"lowrank float64 {case} rtol={RTOL:g}",
                what="fresh LowRankGCRF + solve(method='auto') vs SciPy cg on lam I + E^T E",
                time_s=t_ours, peer="SciPy cg, LinearOperator v -> lam v + E^T (E v)", peer_time_s=t_peer,
                ratio=ratio, target=None if quick else FLAT_TARGET, met=None if quick else bool(ratio >= 0.85),
                method=res.method, iterations=int(np.max(res.iterations)),
                rel_residual=rel(res.x), peer_rel_residual=rel(x_ref))


def count_steps(*, quick: bool = False, **_) -> int:
    return (len(FORMS) + len(FACTORISING)) * len(DTYPES) + 1


def run(*, quick: bool = False, backend: str = "cpu", progress=None, seed: int = 0, forms=FORMS) -> list[dict]:
    """One row per form and dtype (:func:`measure`) and the flat-spectrum comparison; CPU only."""
    if backend != "cpu":
        raise ValueError("the overhead study runs on the CPU (backend='cpu')")
    say = progress or (lambda *_: None)
    repeats = 2 if quick else 7
    rows = []
    for form in forms:
        for dtype in DTYPES:
            # the factorising forms' "auto" reuses a held operator's factorisation: their check and
            # construction are compared on CG too
            for method in (("auto", "cg") if form in FACTORISING else ("auto",)):
                say(f"overhead: {form} {dtype} {method}")
                rows.append(measure(form, dtype, method=method, quick=quick, repeats=repeats, seed=seed))
    say("overhead: low-rank flat spectrum vs SciPy cg")
    rows.append(flat_spectrum_vs_scipy(quick=quick, repeats=repeats, seed=seed))
    _LAST[:] = rows
    return rows


_LAST: list = []


def overhead_table(rows) -> str:
    """Markdown: form, dtype, product, held solve, fresh solve, overhead in products (ms)."""
    lines = ["| form | dtype | method (held / fresh) | product (ms) | held solve (ms) | fresh solve (ms) "
             "| construction (ms) | overhead (products, wall / CPU) | of which method set-up | check (products, wall / CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "overhead_products" not in r:
            continue
        methods = r["method"] if r["method"] == r["fresh_method"] else f"{r['method']} / {r['fresh_method']}"
        lines.append(f"| {r['form']} | {r['dtype']} | {methods} | {1e3 * r['product_s']:.2f} | "
                     f"{1e3 * r['held_s']:.1f} | {1e3 * r['fresh_s']:.1f} | {1e3 * r['build_s']:.1f} | "
                     f"{r['overhead_products']:.2f} / {r['overhead_products_cpu']:.2f} | "
                     f"{r.get('setup_products', 0.0):.2f} | "
                     f"{r.get('check_products', r['overhead_products']):.2f} / "
                     f"{r.get('check_products_cpu', r['overhead_products_cpu']):.2f} |")
    flat = [r for r in rows if "overhead_products" not in r]
    for r in flat:
        lines.append("")
        lines.append(f"{r['what']} ({r['case']}): {1e3 * r['time_s']:.1f} ms ({r['method']}, "
                     f"{r['iterations']} iterations) vs {1e3 * r['peer_time_s']:.1f} ms: "
                     f"{r['ratio']:.2f}x SciPy's speed (relative residuals {r['rel_residual']:.1e} / "
                     f"{r['peer_rel_residual']:.1e})")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m studies.timing_overhead``: the rows above, the timing files and a summary."""
    import studies.timing_overhead as module

    code = family_main(
        "timing_overhead", module, argv,
        description="What a fresh operator adds to a default (method='auto') solve, in products, per form "
                    "and dtype; and the low-rank flat-spectrum solve against SciPy cg.",
        quick_help="small sizes of every form: well under a minute; targets not judged",
        run_kwargs=lambda args: dict(seed=args.seed))
    print(overhead_table(module._LAST))
    return code


if __name__ == "__main__":
    sys.exit(main())
