"""Sparse grid G-CRFs: general ``L x L`` blocks and Potts weights (docs/design.md 3.1, 3.2).

Modules, one job each:

- :mod:`.operators`: :class:`GridGCRF`, :class:`GridPottsGCRF` (products, CSR view, gradients, PD checks);
- :mod:`.kernels`: the compiled (Numba) and array-module (CuPy) products and colour sweeps;
- :mod:`.csr`: CSR assembly from a cached index pattern;
- :mod:`.redblack`: CG on the red-black reduced (Schur complement) system, ``method="reduced_cg"``;
- :mod:`.solves`: the Potts ``L + 1`` split, the sparse direct solve and the Gershgorin/Lanczos check.
"""
from .operators import GridGCRF, GridPottsGCRF, SparseAssembled

__all__ = ["GridGCRF", "GridPottsGCRF", "SparseAssembled"]
