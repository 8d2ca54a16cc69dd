r"""
Mean-field is Jacobi and Gauss–Seidel
=====================================

For a Gaussian CRF, the two classic schedules of mean-field inference are two classic iterative
solvers in disguise: the **parallel** update is the **Jacobi** iteration and the **sequential**
update is **Gauss–Seidel**, both applied to the linear system :math:`M x = b` whose solution is the
G-CRF's exact inference.  This page derives the equivalence and then checks it numerically, iterate
by iterate, on a small grid G-CRF with the public API: :func:`gcrflinalg.parallel_meanfield` and
:func:`gcrflinalg.sequential_meanfield` (written in the probabilistic vocabulary) against
:func:`solvers.jacobi` and :func:`solvers.gauss_seidel` (written as linear algebra, sharing no code
with mean-field).

The information form
--------------------

A G-CRF with energy :math:`E(x) = \tfrac12 x^T M x - b^T x`, :math:`M = A + \lambda I` symmetric
positive definite, is the Gaussian

.. math:: p(x) \propto \exp\bigl(-E(x)\bigr) = \exp\bigl(-\tfrac12 x^T J x + h^T x\bigr),
          \qquad J = M, \quad h = b,

in *information form*: precision matrix :math:`J`, potential vector :math:`h`.  Its mean is
:math:`\mu = J^{-1} h`, so the mean of the Gaussian *is* the solution of :math:`M x = b`.

The mean-field update
---------------------

Mean-field approximates :math:`p` by a product :math:`q(x) = \prod_i q_i(x_i)` and minimises
:math:`\mathrm{KL}(q \,\|\, p)` one factor at a time.  With the other factors fixed, the optimal
:math:`q_i` satisfies :math:`\log q_i(x_i) = \mathbb{E}_{q_{-i}}[\log p(x)] + \text{const}`; the
terms of :math:`\log p` that contain :math:`x_i` are

.. math:: -\tfrac12 J_{ii} x_i^2 + x_i \Bigl(h_i - \sum_{j \ne i} J_{ij} x_j\Bigr),

and taking the expectation replaces each :math:`x_j` by its mean :math:`\mu_j`.  So :math:`q_i` is
Gaussian with precision :math:`J_{ii}` and mean

.. math:: \mu_i = \frac{1}{J_{ii}} \Bigl(h_i - \sum_{j \ne i} J_{ij} \mu_j\Bigr).

Two schedules, two solvers
--------------------------

Split :math:`J = D + L + U` into its diagonal and strictly lower and upper triangles.

* **Parallel** mean-field updates every factor from the previous means:
  :math:`\mu^{(k+1)} = D^{-1}\bigl(h - (L + U)\mu^{(k)}\bigr)`.  That is, line for line, the
  **Jacobi** iteration :math:`x^{(k+1)} = D^{-1}\bigl(b - (M - D) x^{(k)}\bigr)` for :math:`M x = b`.
* **Sequential** mean-field visits :math:`i = 0, 1, \dots, N-1` and always uses the newest means:
  :math:`\mu^{(k+1)}_i = \bigl(h_i - \sum_{j<i} J_{ij}\mu^{(k+1)}_j - \sum_{j>i} J_{ij}\mu^{(k)}_j\bigr)/J_{ii}`,
  i.e. :math:`(D + L)\mu^{(k+1)} = h - U \mu^{(k)}`: the **Gauss–Seidel** sweep in natural order.

Started from the same guess (zero), the two pairs must produce the same sequence of iterates, up to
rounding.  Their convergence theory carries over as well: Gauss–Seidel (sequential mean-field, a
coordinate ascent) converges for every SPD :math:`M`; Jacobi (parallel mean-field) converges only
when the spectral radius of :math:`D^{-1}(M - D)` is below one, which on a G-CRF with
:math:`D = \lambda I` means :math:`\lambda > \rho(A)`, a stronger condition than positive
definiteness.
"""

# %%
# A small grid G-CRF
# ------------------
#
# A Potts G-CRF on an ``8 x 8`` grid with ``L = 3`` labels and the 8-neighbourhood:
# ``M = A + lam I`` has ``N = 3 * 8 * 8 = 192`` unknowns.  Its diagonal is ``lam`` (``A`` has a zero
# diagonal), so ``D = lam I``.  We read the spectrum of ``A`` from the dense matrix (``to_dense()``;
# small systems only) to choose ``lam``.
import matplotlib.pyplot as plt
import numpy as np

import gcrflinalg as gc
import solvers

rng = np.random.default_rng(0)
L, H, W = 3, 8, 8
weights = rng.random((4, H, W))  # K = 4 offsets of the 8-neighbourhood, one weight per edge


def potts(lam):
    return gc.GridPottsGCRF(weights, lam=lam, num_labels=L, neighbourhood=8)


N = L * H * W
A = potts(1.0).to_dense() - np.eye(N)
eig = np.linalg.eigvalsh(A)
pd_bound, rho = -eig.min(), np.abs(eig).max()
print(f"N = {N}; eigenvalues of A in [{eig.min():.3f}, {eig.max():.3f}]")
print(f"M is positive definite for lam > {pd_bound:.3f}; Jacobi converges for lam > rho(A) = {rho:.3f}")

# %%
# One function runs the four methods for ``iterations`` steps from zero and keeps every iterate.
# Mean-field receives the information form ``(J, h)``: the operator's CSR matrix (``to_sparse()``)
# and the unaries flattened in the operator's ``(L, H, W)`` order.  The solvers receive the same
# matrix as ``M x = b``; ``rtol=0`` makes them run all ``iterations`` steps, and their ``callback``
# records each iterate.  Gauss–Seidel runs in the natural order, the order sequential mean-field
# visits the factors in.

b = rng.standard_normal((L, H, W)).reshape(-1)


def run_all(lam, iterations):
    op = potts(lam)
    J = op.to_sparse()  # scipy.sparse CSR, shape (N, N)
    out = {}
    out["parallel mean-field"] = gc.parallel_meanfield(J, b, iterations=iterations).means
    out["sequential mean-field"] = gc.sequential_meanfield(J, b, iterations=iterations).means
    for name, solver, options in [("Jacobi", solvers.jacobi, {}),
                                  ("Gauss–Seidel", solvers.gauss_seidel, {"ordering": "natural"})]:
        history = [np.zeros(N)]
        solver(J, b, rtol=0.0, maxiter=iterations, callback=lambda x: history.append(np.array(x)),
               **options)
        out[name] = np.array(history)
    cg_history = [np.zeros(N)]
    solvers.cg(J, b, rtol=1e-12, maxiter=iterations, callback=lambda x: cg_history.append(np.array(x)))
    out["CG"] = np.array(cg_history)
    # relative residual ||b - M x_k|| / ||b|| of every iterate
    residuals = {name: np.linalg.norm(b - xs @ J.T, axis=1) / np.linalg.norm(b) for name, xs in out.items()}
    return out, residuals


def max_difference(mu, x):
    """max_i |mu_i - x_i| per iteration, relative to max(1, max_i |mu_i|)."""
    return np.abs(mu - x).max(axis=1) / np.maximum(1.0, np.abs(mu).max(axis=1))


# %%
# Both schedules converge: ``lam > rho(A)``
# -----------------------------------------
#
# With ``lam = 1.2 rho(A)`` the Jacobi iteration contracts.  The maximum difference between the
# iterates of each pair stays at the level of rounding (``1e-16``) at every iteration.

iterations = 30
lam_jacobi = 1.2 * rho
its, res = run_all(lam_jacobi, iterations)
d_par = max_difference(its["parallel mean-field"], its["Jacobi"])
d_seq = max_difference(its["sequential mean-field"], its["Gauss–Seidel"])
print(f"lam = {lam_jacobi:.3f}")
print(" k   |parallel MF - Jacobi|   |sequential MF - Gauss-Seidel|   residual (parallel, sequential)")
for k in range(iterations + 1):
    print(f"{k:2d}   {d_par[k]:22.2e}   {d_seq[k]:30.2e}   "
          f"{res['parallel mean-field'][k]:.2e}, {res['sequential mean-field'][k]:.2e}")
assert d_par.max() < 1e-12 and d_seq.max() < 1e-12

# %%
# Positive definite, yet parallel mean-field diverges
# ---------------------------------------------------
#
# On the 8-neighbourhood the spectrum of ``A`` is not symmetric, so there is a range of ``lam``
# where ``M`` is positive definite but ``lam < rho(A)``.  There sequential mean-field (Gauss–Seidel)
# still converges, while parallel mean-field diverges exactly as Jacobi does: the iterates still
# coincide (the difference is measured relative to the size of the growing iterates).

lam_pd = 0.5 * (pd_bound + rho)
its_pd, res_pd = run_all(lam_pd, iterations)
d_par_pd = max_difference(its_pd["parallel mean-field"], its_pd["Jacobi"])
d_seq_pd = max_difference(its_pd["sequential mean-field"], its_pd["Gauss–Seidel"])
print(f"lam = {lam_pd:.3f}: max difference over {iterations} iterations: "
      f"parallel MF vs Jacobi {d_par_pd.max():.2e}, sequential MF vs Gauss-Seidel {d_seq_pd.max():.2e}")
print(f"final residual: parallel MF {res_pd['parallel mean-field'][-1]:.2e} (diverging), "
      f"sequential MF {res_pd['sequential mean-field'][-1]:.2e}")
assert d_par_pd.max() < 1e-12 and d_seq_pd.max() < 1e-12

# %%
# Residual against iteration
# --------------------------
#
# Lines are mean-field, markers the solvers: each pair lies on one curve.  CG, which mean-field has
# no counterpart of, is drawn for reference.

fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
styles = {"parallel mean-field": dict(color="C0", lw=2),
          "Jacobi": dict(color="C0", ls="none", marker="o", mfc="none"),
          "sequential mean-field": dict(color="C1", lw=2),
          "Gauss–Seidel": dict(color="C1", ls="none", marker="s", mfc="none"),
          "CG": dict(color="0.4", ls="--")}
for ax, (lam, residuals, title) in zip(axes, [(lam_jacobi, res, "lam > rho(A): both converge"),
                                              (lam_pd, res_pd, "PD, lam < rho(A): parallel diverges")]):
    for name, style in styles.items():
        r = residuals[name]
        ax.semilogy(np.arange(len(r)), np.maximum(r, 1e-17), label=name, **style)
    ax.set_title(f"{title} (lam = {lam:.2f})")
    ax.set_xlabel("iteration")
axes[0].set_ylabel("||b - M x_k|| / ||b||")
axes[0].set_ylim(1e-16, 1e3)
axes[1].legend()
plt.show()
