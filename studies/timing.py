"""Timing study: every operator family's timing entries, plus a peer comparison on the photograph.

Run ``python -m studies.timing`` (``--quick`` for small sizes, ``--help`` for every option).  It
gathers the rows of the per-family modules ``studies.timing_grid``, ``studies.timing_lowrank`` and
``studies.timing_video`` and ``studies.timing_training`` (training steps of the torch layers; each row a measurement, most a ratio against a peer timed in the same
run), and adds one comparison on the full-resolution photograph (600 x 512 pixels, 21 labels):

    this toolkit's *exact* low-rank Potts G-CRF solve (``method="direct"``, random Fourier features of
    the bilateral kernel)  vs  the fully-connected CRF of ``pydensecrf2`` (10 mean-field iterations
    with the same bilateral kernel).

The target is to be faster than the 10 mean-field iterations.  ``pydensecrf2`` is an optional extra
(``pip install -e '.[densecrf]'``); without it the comparison reports this toolkit's time only.

Prints a short summary (targets met / missed) and writes ``timing.md`` (the full table: times in
ms, every comparison as "N.Nx faster/slower" than its peer), ``timing.json`` and ``timing.csv`` (every
row) and one ``timing_<family>.png`` per family (this toolkit vs its peer) into ``--out``.  With
``--backend gpu`` the same entries run with CuPy (the peer CRF stays on the CPU).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

from studies._common import (Outputs, Progress, array_module, best_time, study_parser,
                             timing_table, write_timing)

__all__ = ["FAMILIES", "run_family", "photo_peer_comparison", "run", "count_steps", "main"]

#: Operator families with a ``studies.timing_<family>`` module.
FAMILIES = ("grid", "lowrank", "video", "auto", "training", "overhead")

PHOTO_ENTRY = "photo-peer"
PEER_NAME = "pydensecrf2, 10 mean-field iterations"


def run_family(family: str, *, quick: bool = False, backend: str = "cpu", progress=None,
               seed: int = 0) -> list[dict]:
    """The rows of ``studies.timing_<family>.run``; a module that is missing or fails gives one row
    that says so (``time_s`` None) instead of stopping the study."""
    name = f"studies.timing_{family}"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return [_note_row(family, f"{name} is not available ({exc})")]
    try:
        rows = list(module.run(quick=quick, backend=backend, progress=progress, seed=seed))
    except Exception as exc:  # reported in the table; the other families still run
        return [_note_row(family, f"{name}.run failed: {type(exc).__name__}: {exc}")]
    for row in rows:
        row.setdefault("family", family)
    return rows


def _note_row(family, message):
    return dict(entry=family, case="-", what=message, time_s=None, peer=None, ratio=None, target=None,
                met=None, family=family, error=message)


# --------------------------------------------------------------------------- photograph vs peer
def _softmax(b):
    z = b - b.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


def photo_problem(*, stride: int = 1, num_labels: int = 21, num_features: int = 64, theta_pos: float = 80.0,
                  theta_col: float = 13.0 / 255.0, weight: float = 1.0, margin: float = 3.0,
                  peer_weight: float = 3.0, seed: int = 0):
    """The low-rank Potts G-CRF of the photograph: ``psi = sqrt(weight) * RFF(f)`` of the bilateral
    features ``f = (y/theta_pos, x/theta_pos, rgb/theta_col)``, unaries from 21 colour clusters, and
    ``lam = (1 + margin) ||psi||_2^2`` (positive definite for any ``margin > 0``; near 0 the solution
    collapses to the globally dominant label, ``margin = 3`` smooths about as much as the peer CRF
    with Potts compatibility ``peer_weight = 3``: both change the unary's label on under 10 % of
    the pixels).

    Returns
    -------
    dict
        ``image (H, W, 3)``, ``psi (D, H, W)``, ``b (L, H, W)``, ``lam`` and the settings.
    """
    from gcrflinalg import problems

    image = problems.load_photo(stride)
    h, w = image.shape[:2]
    rng = np.random.default_rng([seed, 21])
    feats = problems.bilateral_features(image, theta_pos=theta_pos, theta_col=theta_col, stride=stride)
    psi = np.sqrt(weight) * problems.random_fourier_features(feats, num_features, rng).reshape(num_features, h, w)
    b = problems.unaries_from_clusters(image, num_labels, seed=seed, noise=0.5)
    flat = psi.reshape(num_features, -1)
    lam = (1.0 + margin) * float(np.linalg.eigvalsh(flat @ flat.T)[-1])
    return dict(image=image, psi=psi, b=b, lam=lam, stride=stride, num_labels=num_labels,
                num_features=num_features, theta_pos=theta_pos, theta_col=theta_col, weight=weight,
                peer_weight=peer_weight)


def _densecrf_available():
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def densecrf_inference(image, b, *, theta_pos, theta_col, weight, stride=1, iterations=10):
    """Marginals ``(L, H, W)`` of pydensecrf2's fully-connected CRF with unaries ``-log softmax(b)`` and
    one bilateral kernel of the same bandwidths (positions in full-resolution pixels)."""
    import pydensecrf.densecrf as dcrf

    L, h, w = b.shape
    crf = dcrf.DenseCRF2D(w, h, L)
    unary = -np.log(np.maximum(_softmax(b), 1e-12)).reshape(L, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    rgb = np.ascontiguousarray(np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8))
    crf.addPairwiseBilateral(sxy=theta_pos / stride, srgb=theta_col * 255.0, rgbim=rgb, compat=weight)
    q = crf.inference(iterations)
    return np.asarray(q, dtype=np.float64).reshape(L, h, w)


def photo_peer_comparison(*, quick: bool = False, backend: str = "cpu", progress=None, repeats: int = 3,
                          num_features: int = 64, seed: int = 0) -> list[dict]:
    """This toolkit's exact low-rank Potts G-CRF solve against pydensecrf2's 10 mean-field iterations
    on the photograph (full resolution; ``quick``: stride 4).

    Returns one row (``entry = "photo-peer"``): ``time_s`` of the exact solve (operator construction,
    positive-definiteness check and Woodbury direct solve), ``peer_time_s`` of the peer (CRF set-up
    and 10 iterations), ``ratio = peer_time_s / time_s`` (> 1: faster than the peer), and the
    fraction of pixels whose most likely label agrees (and the fraction each model changes from the
    unary's label).
    """
    from gcrflinalg import LowRankPottsGCRF, solve, to_host

    say = progress or (lambda message: None)
    xp = array_module(backend)
    stride = 4 if quick else 1
    say(f"photo peer comparison: building the stride-{stride} problem")
    prob = photo_problem(stride=stride, num_features=num_features, seed=seed)
    psi_dev = xp.asarray(prob["psi"])
    b_dev = xp.asarray(prob["b"])
    L, h, w = prob["b"].shape
    case = f"photograph {h} x {w}, {L} labels, D = {num_features}, {backend}"

    def exact():
        op = LowRankPottsGCRF(psi_dev, prob["lam"], L)  # fresh: no cached factorisation
        return op, solve(op, b_dev, "direct")

    say(f"photo peer comparison: exact solve ({case})")
    t_ours = best_time(exact, repeats=repeats, xp=xp)
    op, res = exact()
    x = np.asarray(to_host(res.x))
    rel = float(res.relative_residual)
    row = dict(entry=PHOTO_ENTRY, case=case,
               what="exact low-rank Potts G-CRF (Woodbury direct solve)", time_s=t_ours,
               peer=None, ratio=None, target="faster than the peer (ratio > 1)", met=None,
               iterations=1, rel_residual=rel, family="photo", stride=stride, num_labels=L,
               num_features=num_features, lam=prob["lam"])
    if not _densecrf_available():
        row.update(peer=f"{PEER_NAME} (not installed: pip install -e '.[densecrf]')", skipped=True)
        return [row]
    kw = dict(theta_pos=prob["theta_pos"], theta_col=prob["theta_col"], weight=prob["peer_weight"], stride=stride)
    say(f"photo peer comparison: {PEER_NAME}")
    t_peer = best_time(lambda: densecrf_inference(prob["image"], prob["b"], **kw), repeats=repeats)
    q = densecrf_inference(prob["image"], prob["b"], **kw)
    ratio = t_peer / t_ours
    unary_labels = prob["b"].argmax(axis=0)
    row.update(peer=PEER_NAME, peer_time_s=t_peer, ratio=ratio, met=bool(ratio > 1.0),
               label_agreement=float(np.mean(x.argmax(axis=0) == q.argmax(axis=0))),
               changed_by_ours=float(np.mean(x.argmax(axis=0) != unary_labels)),
               changed_by_peer=float(np.mean(q.argmax(axis=0) != unary_labels)))
    return [row]


# --------------------------------------------------------------------------- the study
def count_steps(*, quick: bool = False, families=FAMILIES, photo: bool = True) -> int:
    """How many steps :func:`run` announces to its ``progress`` callback."""
    total = 0
    for family in families:
        try:
            total += importlib.import_module(f"studies.timing_{family}").count_steps(quick=quick)
        except Exception:  # a missing family is one row, no step
            pass
    return total + ((3 if _densecrf_available() else 2) if photo else 0)


def run(*, quick: bool = False, backend: str = "cpu", families=FAMILIES, photo: bool = True,
        progress=None, seed: int = 0) -> list[dict]:
    """Every family's rows, then the photograph comparison (when ``photo``); ``seed`` seeds the
    problems."""
    rows = []
    for family in families:
        rows += run_family(family, quick=quick, backend=backend, progress=progress, seed=seed)
    if photo:
        try:
            rows += photo_peer_comparison(quick=quick, backend=backend, progress=progress, seed=seed)
        except Exception as exc:
            rows.append(_note_row("photo", f"photo comparison failed: {type(exc).__name__}: {exc}"))
    return rows


def format_table(rows) -> str:
    """The rows as the markdown table of every timing study (times in ms, comparisons in words)."""
    return timing_table(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = study_parser(
        "timing",
        "Timing entries of every operator family (grid, low-rank, video) and of the torch layers' training steps, each against a peer timed in the "
        "same run, and this toolkit's exact low-rank Potts G-CRF against pydensecrf2's fully-connected CRF "
        "(10 mean-field iterations) on the full-resolution photograph.  Prints a short summary; writes "
        "timing.md (the full table), timing.json, timing.csv and one timing_<family>.png per family.",
        quick_help="small sizes (each family's quick mode, the photograph at stride 4): under a minute")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), metavar="FAMILY",
                        help=f"operator families to time, space-separated, any of: {' '.join(FAMILIES)} "
                             "(default: all)")
    parser.add_argument("--no-photo", action="store_true",
                        help="skip the photograph comparison against pydensecrf2")
    return parser


def main(argv=None) -> int:
    """Run the study; returns the process exit status."""
    args = build_parser().parse_args(argv)
    array_module(args.backend)
    out = Outputs(args.out)
    families = list(dict.fromkeys(args.families))
    t0 = time.perf_counter()
    total = count_steps(quick=args.quick, families=families, photo=not args.no_photo)
    with Progress(total, "timing", enabled=not args.no_progress, unit="step") as bar:
        rows = run(quick=args.quick, backend=args.backend, families=families, photo=not args.no_photo,
                   progress=bar, seed=args.seed)
    elapsed = time.perf_counter() - t0
    header = (f"{'quick sizes' if args.quick else 'full sizes'}, backend {args.backend}, "
              f"{os.cpu_count()} CPUs; {elapsed:.1f} s.")
    summary = write_timing(out, rows, title="Timing", header=header,
                           options=dict(quick=args.quick, backend=args.backend, families=families,
                                        photo=not args.no_photo, seed=args.seed), elapsed_s=elapsed)
    print(f"timing: {header}\n{summary}\n(the full table is in timing.md)")
    out.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
