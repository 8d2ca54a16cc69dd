"""Timing of G-CRF layers in training, per form, and of the grid solve under CPU contention.

``python -m studies.timing_training [--quick] [--out DIR]`` prints a short summary and writes the
table (``timing.md``), ``timing.json``, ``timing.csv`` and ``timing_training.png``; :func:`run`
returns its rows for :mod:`studies.timing`.  Needs PyTorch (without it: one row saying so).

Sizes (float32, with the step-vs-forward row in float64 too; a batch of 2 systems): grid and grid
Potts ``85 x 109``, ``L = 21``, 4-neighbourhood
(the problem of :mod:`studies.timing_grid`, ``lam = 10``); low-rank and low-rank Potts ``41 x 41``,
``L = 21``, ``D = 128`` (decaying spectrum; ``lam = 1``, Potts ``1.1 ||psi||_2^2``); video 4 frames
``41 x 41``, ``L = 12``, ``Ds = Dt = 64`` (``||S_v||^2 ~ 8 lam``, ``||T_v||^2 ~ 0.3 lam``, ``lam = 1``,
``"fc"``).  ``--quick``: small sizes, targets not judged.  Multi-resolution (3.3) has a layer but no
rows here yet (its plain-PyTorch peer is not written).

Rows per form, every pair measured alternately in one run (best of a few):

(a) *training step*: :func:`gcrflinalg.interop.torch.gcrf_solve` with its defaults on fresh
    parameter tensors that require grad, forward and ``.backward()`` of a linear loss, against the
    *forward solve on a fresh operator* (:func:`gcrflinalg.solve` with its defaults on a newly built
    operator, factorisations and layouts included).  Target: step <= 3x forward.  The grid forms
    also get the step with ``check_pd=False`` (the cost of the default positive-definiteness check).
(b) *first solve on a new operator* against a *repeated solve on the same operator* (set-up costs).
(c) the step against the *plain-PyTorch layer* a user would write instead: the same matrix-free
    product in torch operations (grid: einsum over ``L x L`` blocks of shifted neighbours; grid
    Potts: shifted label sums; low-rank: two matmuls; video: per-frame matmuls and the temporal
    sum) inside CG unrolled under autograd to the same ``rtol``.  Target: at least 2x faster.
(d) the grid solve (``gcrflinalg.solve``, defaults, one system) while a busy-loop process keeps one
    core busy, against the same solve without it; the busy process is paused and resumed
    (SIGSTOP/SIGCONT) between the timed calls, so the two alternate.  Target: at most 2.5x slower.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np

import gcrflinalg

from studies._common import family_main, paired_best

__all__ = ["run", "count_steps", "main", "FORMS"]

ENTRY = "training"
FORMS = ("grid", "grid_potts", "lowrank", "lowrank_potts", "video")
RTOL = 1e-5  # the float32 default of the torch layer


# --------------------------------------------------------------------------- problems
def _decaying(rng, shape, top=1.0):
    """Gaussian rows (axis -2 of ``shape``) with squared norms ``top / (d + 1)``, float64."""
    g = rng.standard_normal(shape)
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    dim = shape[-2]
    return g * np.sqrt(top / np.arange(1, dim + 1))[:, None]


def make_problem(form, *, quick=False, seed=0):
    """``(params, b, lam, options, case)``: float32 arrays with a batch of 2 systems."""
    rng = np.random.default_rng([seed, 7])
    if form in ("grid", "grid_potts"):
        from studies.timing_grid import make_problem as grid_problem

        H, W, L = (30, 40, 5) if quick else (85, 109, 21)
        weights, pairwise, b = grid_problem(H, W, L, random_state=seed)
        scale = np.array([1.0, 0.9])
        if form == "grid":
            p = scale[:, None, None, None, None, None] * pairwise[None]
        else:
            p = scale[:, None, None, None] * weights[None]
        b2 = np.stack([b, rng.standard_normal(b.shape)])
        case = f"{H}x{W} L={L} 4-nbhd"
        return [p.astype(np.float32)], b2.astype(np.float32), 10.0, {}, case
    if form in ("lowrank", "lowrank_potts"):
        H, W, L, D = (16, 16, 5, 16) if quick else (41, 41, 21, 128)
        b = rng.standard_normal((2, L, H, W))
        if form == "lowrank":
            E = np.stack([_decaying(rng, (D, L * H * W)) for _ in range(2)]).reshape(2, D, L, H, W)
            return [E.astype(np.float32)], b.astype(np.float32), 1.0, {}, f"{H}x{W} L={L} D={D}"
        psi = np.stack([_decaying(rng, (D, H * W)) for _ in range(2)])
        lam = 1.1 * max(float(np.linalg.eigvalsh(p @ p.T)[-1]) for p in psi)
        return [psi.reshape(2, D, H, W).astype(np.float32)], b.astype(np.float32), lam, {}, f"{H}x{W} L={L} D={D}"
    if form == "video":
        V, H, W, L, Ds, Dt = (2, 12, 12, 4, 16, 16) if quick else (4, 41, 41, 12, 64, 64)
        n = L * H * W
        S = np.stack([[_decaying(rng, (Ds, n), 8.0) for _ in range(V)] for _ in range(2)])
        T = np.stack([[_decaying(rng, (Dt, n), 0.3) for _ in range(V)] for _ in range(2)])
        b = rng.standard_normal((2, V, L, H, W))
        params = [S.reshape(2, V, Ds, L, H, W).astype(np.float32), T.reshape(2, V, Dt, L, H, W).astype(np.float32)]
        return params, b.astype(np.float32), 1.0, {"neighbourhood": "fc"}, f"{V} frames {H}x{W} L={L} Ds=Dt={Ds} fc"
    raise ValueError(f"unknown form {form!r}")


def _operator(form, params, lam, options, num_labels):
    """A new operator of ``form`` (the public class named by the form registry)."""
    from gcrflinalg.forms.registry import get_form

    spec = get_form(form)
    extra = dict(num_labels=num_labels) if spec.needs_num_labels else {}
    return spec.operator_class()(*params, lam, **extra, **options)


# --------------------------------------------------------------------------- plain-PyTorch peers
def _torch_matvec(form, params, lam, torch):
    """``v -> M v`` in torch operations for the batch of systems (differentiable in the params)."""
    if form == "grid":
        (pw,) = params  # (B, 2, L, L, H, W)

        def mv(v):  # v (B, L, H, W)
            out = lam * v
            P0, P1 = pw[:, 0], pw[:, 1]
            right = torch.einsum("bmnhw,bnhw->bmhw", P0[..., :, :-1], v[..., :, 1:])
            left = torch.einsum("bmnhw,bmhw->bnhw", P0[..., :, :-1], v[..., :, :-1])
            down = torch.einsum("bmnhw,bnhw->bmhw", P1[..., :-1, :], v[..., 1:, :])
            up = torch.einsum("bmnhw,bmhw->bnhw", P1[..., :-1, :], v[..., :-1, :])
            z = torch.zeros_like(v)
            z1 = torch.nn.functional.pad(right, (0, 1)) + torch.nn.functional.pad(left, (1, 0))
            z2 = torch.nn.functional.pad(down, (0, 0, 0, 1)) + torch.nn.functional.pad(up, (0, 0, 1, 0))
            return out + z + z1 + z2
        return mv
    if form == "grid_potts":
        (wt,) = params  # (B, 2, H, W)
        w0, w1 = wt[:, None, 0], wt[:, None, 1]
        pad = torch.nn.functional.pad

        def wprod(u):
            return (pad(w0[..., :, :-1] * u[..., :, 1:], (0, 1)) + pad(w0[..., :, :-1] * u[..., :, :-1], (1, 0))
                    + pad(w1[..., :-1, :] * u[..., 1:, :], (0, 0, 0, 1))
                    + pad(w1[..., :-1, :] * u[..., :-1, :], (0, 0, 1, 0)))

        def mv(v):
            return lam * v + wprod(v.sum(1, keepdim=True) - v)
        return mv
    if form == "lowrank":
        (E,) = params
        Ef = E.reshape(E.shape[0], E.shape[1], -1)

        def mv(v):
            vf = v.reshape(v.shape[0], -1, 1)
            return (lam * vf + Ef.transpose(1, 2) @ (Ef @ vf)).reshape(v.shape)
        return mv
    if form == "lowrank_potts":
        (psi,) = params
        pf = psi.reshape(psi.shape[0], psi.shape[1], -1)  # (B, D, P)

        def mv(v):
            vf = v.reshape(v.shape[0], v.shape[1], -1)  # (B, L, P)
            proj = vf @ pf.transpose(1, 2)  # (B, L, D)
            q = (proj.sum(1, keepdim=True) - proj) @ pf  # (B, L, P)
            return (lam * vf + q).reshape(v.shape)
        return mv
    S, T = params  # (B, V, D, L, H, W)
    Sf = S.reshape(S.shape[0], S.shape[1], S.shape[2], -1)
    Tf = T.reshape(T.shape[0], T.shape[1], T.shape[2], -1)

    def mv(v):  # (B, V, L, H, W)
        vf = v.reshape(v.shape[0], v.shape[1], -1, 1)
        sp = Sf @ vf  # (B, V, Ds, 1)
        tp = Tf @ vf
        msg = tp.sum(1, keepdim=True) - tp
        return (lam * vf + Sf.transpose(2, 3) @ sp + Tf.transpose(2, 3) @ msg).reshape(v.shape)
    return mv


def _torch_cg(mv, b, rtol, torch, maxiter=1000):
    """CG unrolled under autograd until every system's residual meets ``rtol``."""
    dims = tuple(range(1, b.ndim))
    x = torch.zeros_like(b)
    r = b
    p = r
    rr = (r * r).sum(dims, keepdim=True)
    stop = (rtol ** 2) * rr.detach().amax()
    it = 0
    while it < maxiter and float(rr.detach().amax()) > stop:
        Ap = mv(p)
        alpha = rr / (p * Ap).sum(dims, keepdim=True)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).sum(dims, keepdim=True)
        p = r + (rr_new / rr) * p
        rr = rr_new
        it += 1
    return x, it


# --------------------------------------------------------------------------- measurements
def _contended_pair(fn, rounds):
    """Best seconds of ``fn`` without and with a busy-loop process keeping one core busy; the
    process is paused and resumed between calls so that the two conditions alternate."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    best = [math.inf, math.inf]
    try:
        fn()
        for _ in range(rounds):
            for state in (0, 1):
                os.kill(busy.pid, signal.SIGCONT if state else signal.SIGSTOP)
                time.sleep(0.02)
                t0 = time.perf_counter()
                fn()
                best[state] = min(best[state], time.perf_counter() - t0)
    finally:
        busy.kill()
        busy.wait()
    return best[0], best[1]


STEPS = len(FORMS) + 1


def count_steps(*, quick: bool = False, **_) -> int:
    """How many steps :func:`run` announces to its ``progress`` callback."""
    return STEPS


def run(*, quick: bool = False, backend: str = "cpu", progress=None, seed: int = 0) -> list[dict]:
    """Measure the rows of the module docstring (CPU only; ``quick``: small sizes, no targets)."""
    say = (lambda msg: progress(f"training: {msg}")) if progress else (lambda msg: None)
    rows = []

    def row(form, case, what, t, peer=None, peer_t=None, target=None, met=None, **extra):
        if quick and target is not None:
            target, met = f"{target} (full size only)", None
        rows.append(dict(entry=ENTRY, family=ENTRY, case=f"{form}: {case}", what=what, time_s=t, peer=peer,
                         peer_time_s=peer_t, ratio=None if not (t and peer_t) else peer_t / t,
                         target=target, met=met, form=form, **extra))

    try:
        import torch
    except ImportError:
        for _ in range(STEPS):
            say("PyTorch missing")
        rows.append(dict(entry=ENTRY, family=ENTRY, case="-", what="needs PyTorch (pip install -e '.[torch]')",
                         time_s=None, peer=None, ratio=None, target=None, met=None))
        return rows
    if backend != "cpu":
        raise SystemExit("error: studies.timing_training measures CPU training steps; use --backend cpu")
    from gcrflinalg.interop.torch import gcrf_solve

    repeats = 1 if quick else 3
    torch_threads = torch.get_num_threads()
    for form in FORMS:
        say(form)
        params, b, lam, options, case = make_problem(form, quick=quick, seed=seed)
        case += f", float32, batch 2, torch threads {torch_threads}"
        labels = b.shape[-3]
        target = torch.from_numpy(np.random.default_rng([seed, 8]).standard_normal(b.shape).astype(np.float32))

        def step(check_pd=None, form=form, params=params, b=b, lam=lam, options=options, target=target):
            ps = [torch.from_numpy(p).clone().requires_grad_() for p in params]
            bt = torch.from_numpy(b).clone().requires_grad_()
            kw = {} if check_pd is None else dict(check_pd=check_pd)
            x = gcrf_solve(form, bt, *ps, lam=lam, **options, **kw)
            (x * target).sum().backward()
            return x

        def forward_fresh(form=form, params=params, b=b, lam=lam, options=options, labels=labels):
            return gcrflinalg.solve(_operator(form, params, lam, options, labels), b)

        def torch_step(form=form, params=params, b=b, lam=lam, target=target):
            ps = [torch.from_numpy(p).clone().requires_grad_() for p in params]
            bt = torch.from_numpy(b).clone().requires_grad_()
            x, it = _torch_cg(_torch_matvec(form, ps, lam, torch), bt, RTOL, torch)
            (x * target).sum().backward()
            return it

        # (a) step vs forward on a fresh operator
        t_step, t_fwd = paired_best(step, forward_fresh, repeats=repeats)
        res = forward_fresh()
        row(form, case, "training step (gcrf_solve defaults: forward + backward)", t_step,
            peer="forward solve, fresh operator (gcrflinalg.solve defaults)", peer_t=t_fwd,
            target="step <= 3x forward", met=t_step / t_fwd <= 3, method=res.method,
            iterations=np.asarray(res.iterations).tolist())
        if form in ("grid", "grid_potts"):
            t_nopd, t_fwd2 = paired_best(lambda: step(False), forward_fresh, repeats=repeats)
            row(form, case, "training step, check_pd=False", t_nopd,
                peer="forward solve, fresh operator (gcrflinalg.solve defaults)", peer_t=t_fwd2,
                target="step <= 3x forward", met=t_nopd / t_fwd2 <= 3)
        # (a) again in float64: the same problem cast, the layer's float64 defaults
        p64, b64, target64 = [p.astype(np.float64) for p in params], b.astype(np.float64), target.double()
        t_step64, t_fwd64 = paired_best(lambda: step(params=p64, b=b64, target=target64),
                                        lambda: forward_fresh(params=p64, b=b64), repeats=repeats)
        row(form, case.replace("float32", "float64"), "training step (gcrf_solve defaults: forward + backward)",
            t_step64, peer="forward solve, fresh operator (gcrflinalg.solve defaults)", peer_t=t_fwd64,
            target="step <= 3x forward", met=t_step64 / t_fwd64 <= 3)
        # (b) first solve on a new operator vs repeated solves on one operator
        op = _operator(form, params, lam, options, labels)
        gcrflinalg.solve(op, b)
        t_first, t_again = paired_best(forward_fresh, lambda: gcrflinalg.solve(op, b), repeats=repeats)
        row(form, case, "first solve on a new operator (build + set-up + solve)", t_first,
            peer="repeated solve on the same operator", peer_t=t_again)
        # (c) step vs the plain-PyTorch layer
        t_step2, t_torch = paired_best(step, torch_step, repeats=repeats)
        torch_iters = torch_step()
        row(form, case, "training step (gcrf_solve defaults)", t_step2,
            peer="plain PyTorch: torch product + CG unrolled under autograd", peer_t=t_torch,
            target=">= 2x faster than plain PyTorch", met=t_torch / t_step2 >= 2, torch_cg_iterations=torch_iters)

    # (d) the grid solve with one core kept busy by another process
    say("grid solve, one core busy")
    params, b, lam, options, case = make_problem("grid", quick=quick, seed=seed)
    op = _operator("grid", [params[0][0]], lam, options, b.shape[-3])
    b1 = b[0]
    gcrflinalg.solve(op, b1)
    t_quiet, t_busy = _contended_pair(lambda: gcrflinalg.solve(op, b1), 4 if quick else 15)
    res = gcrflinalg.solve(op, b1)
    row("grid", case + f", float32, 1 system, {gcrflinalg.get_num_threads()} kernel threads of "
        f"{os.cpu_count()} CPUs", "solve (gcrflinalg.solve defaults), one core kept busy by another process",
        t_busy, peer="the same solve, no busy process", peer_t=t_quiet,
        target="<= 2.5x the uncontended solve", met=t_busy / t_quiet <= 2.5, method=res.method)
    return rows


def main(argv=None) -> int:
    """``python -m studies.timing_training``: the rows above, the timing files and a short summary."""
    import studies.timing_training as module

    return family_main(
        "timing_training", module, argv,
        description="Training-step timing of the PyTorch G-CRF layers of every form (grid, grid Potts, "
                    "low-rank, low-rank Potts, video): the step against a forward solve on a fresh operator "
                    "and against a plain-PyTorch layer (CG unrolled under autograd), the first solve on a new "
                    "operator against a repeated one, and the grid solve with one CPU core kept busy by "
                    "another process.  Writes timing.md (the table), timing.json, timing.csv and "
                    "timing_training.png.",
        quick_help="small sizes (seconds); targets are then not judged",
        run_kwargs=lambda args: dict(seed=args.seed))


if __name__ == "__main__":
    sys.exit(main())
