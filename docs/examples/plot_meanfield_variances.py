r"""
Mean-field gets the means right and the variances wrong
=======================================================

A G-CRF is the Gaussian :math:`x \sim \mathcal N(M^{-1} b, M^{-1})`.  Gaussian mean-field
approximates it by a product of independent factors :math:`q_i`, and its fixed point is exact in the
means: the parallel schedule *is* the Jacobi iteration on :math:`M x = b` (see
:doc:`plot_meanfield_jacobi`), so it converges to :math:`\mu = M^{-1} b`.  The variances are another
matter.  Each factor :math:`q_i` has the precision :math:`M_{ii}`, so mean-field reports

.. math:: \operatorname{Var}_q[x_i] = \frac{1}{M_{ii}},

whereas the marginal variance of the Gaussian is :math:`(M^{-1})_{ii}`.  For a symmetric positive
definite :math:`M`, the Cauchy–Schwarz inequality for the inner product of :math:`M` gives
:math:`1 = (e_i^T e_i)^2 \le (e_i^T M e_i)(e_i^T M^{-1} e_i)`, hence

.. math:: (M^{-1})_{ii} \ \ge\ \frac{1}{M_{ii}},

with equality only when row :math:`i` has no coupling.  Mean-field is overconfident exactly where
the pairwise terms are strong.  This page checks both statements on a small grid G-CRF with
:func:`gcrflinalg.parallel_meanfield`, :func:`gcrflinalg.marginal_variances` (exact, by a sparse
factorisation) and :func:`gcrflinalg.sample` (whose samples' variances agree with the exact ones).
"""

# %%
# A Potts grid G-CRF
# ------------------
#
# ``L = 2`` labels on a ``12 x 12`` grid with the 8-neighbourhood and positive weights, and ``lam``
# 20% above the spectral radius of ``A`` so that parallel mean-field (Jacobi) converges.
import matplotlib.pyplot as plt
import numpy as np

import gcrflinalg as gc

rng = np.random.default_rng(1)
L, H, W = 2, 12, 12
weights = 0.5 * rng.random((4, H, W))
weights[:, :, : W // 2] *= 0.1  # weak couplings on the left half, strong on the right
A = gc.GridPottsGCRF(weights, lam=1.0, num_labels=L, neighbourhood=8).to_dense() - np.eye(L * H * W)
lam = 1.2 * np.abs(np.linalg.eigvalsh(A)).max()
op = gc.GridPottsGCRF(weights, lam=lam, num_labels=L, neighbourhood=8)
b = rng.standard_normal((L, H, W))

# %%
# The means agree
# ---------------
mf = gc.parallel_meanfield(op.to_sparse(), b.reshape(-1), iterations=300)
mu = gc.solve(op, b, method="direct").x
mean_gap = np.abs(mf.means[-1] - mu.reshape(-1)).max()
print(f"max |mean-field mean - M^-1 b| = {mean_gap:.2e}")
assert mean_gap < 1e-8

# %%
# The variances do not
# --------------------
exact = gc.marginal_variances(op)  # exact: sparse LU solves (small system)
mf_var = mf.variances.reshape(L, H, W)  # 1 / M_ii
ratio = exact.values / mf_var
print(f"exact variances: {exact.method}; ratio (M^-1)_ii / (1/M_ii): min {ratio.min():.3f}, "
      f"max {ratio.max():.3f}")
assert np.all(ratio >= 1 - 1e-12)  # the inequality above
left, right = ratio[..., : W // 2].mean(), ratio[..., W // 2:].mean()
print(f"mean ratio, weak couplings (left): {left:.3f}; strong couplings (right): {right:.3f}")
assert right > left

# %%
# Samples confirm the exact variances
# -----------------------------------
# 2000 samples of :math:`\mathcal N(M^{-1} b, M^{-1})` (a Lanczos approximation of
# :math:`M^{-1/2} z` with a stopping rule on this grid form): their empirical variances match
# :math:`(M^{-1})_{ii}` within the sampling error (relative standard deviation
# :math:`\sqrt{2/(S-1)} \approx 0.032`), not mean-field's.
draws = gc.sample(op, b, 2000, rng=0)
sample_var = draws.samples.var(axis=0, ddof=1)
rel = sample_var / exact.values - 1
print(f"samples ({draws.method}, error estimate {draws.error:.1e}): "
      f"relative deviation of their variances from exact: mean {rel.mean():+.3f}, max |.| {np.abs(rel).max():.3f}")
assert abs(rel.mean()) < 0.015 and np.abs(rel).max() < 0.15

# %%
# Per-pixel standard deviations of label 0: exact (left), mean-field (middle) on one colour scale,
# and the ratio of the variances (right): mean-field is most overconfident where the couplings are
# strong.
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
vmin, vmax = np.sqrt(mf_var[0]).min(), np.sqrt(exact.values[0]).max()
for ax, img, title in [(axes[0], np.sqrt(exact.values[0]), "exact std sqrt((M^-1)_ii)"),
                       (axes[1], np.sqrt(mf_var[0]), "mean-field std 1/sqrt(M_ii)")]:
    im = ax.imshow(img, vmin=vmin, vmax=vmax, cmap="viridis")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
im = axes[2].imshow(ratio[0], cmap="magma")
axes[2].set_title("variance ratio exact / mean-field")
fig.colorbar(im, ax=axes[2], fraction=0.046)
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
