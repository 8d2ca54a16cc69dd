"""Preconditioners: the ``M`` argument adapter and the block-Jacobi preconditioner."""
from __future__ import annotations

import numpy as np

from .backend import asarray, get_array_module

from ._operator import _is_sparse, as_operator, compute_dtype

__all__ = ["block_jacobi_preconditioner", "BlockJacobiPreconditioner", "as_preconditioner"]


def as_preconditioner(M, xp, n, dtype):
    """Turn ``M`` (approximating ``A^{-1}``) into a batched function ``R (*batch, n) -> M R``.

    ``M`` may be None (no preconditioning: returns None), a dense array or sparse matrix (applied as
    a matrix), a LinearOperator, an object with ``shape`` and batched ``matvec`` (such as
    :func:`block_jacobi_preconditioner`'s result), or a plain callable ``M(R)`` on ``(*batch, n)``.
    """
    if M is None:
        return None
    if hasattr(M, "shape") and (hasattr(M, "matvec") or _is_sparse(M) or hasattr(M, "__array__")
                                or hasattr(M, "__dlpack__")):
        op = as_operator(M, xp, dtype, name="M")
        if op.n != n:
            raise ValueError(f"M has shape {op.shape} but A has shape {(n, n)}")
        return op.apply
    if callable(M):
        def apply(R):
            return asarray(M(R)).astype(dtype, copy=False)

        return apply
    raise TypeError(f"M must be a matrix, a LinearOperator or a callable, got {type(M).__name__}")


class BlockJacobiPreconditioner:
    """Applies the inverse of the block diagonal of ``A``: ``z_k = B_k^{-1} r_k`` per block ``k``.

    Attributes
    ----------
    inverse_blocks : array, shape ``(*batch, n // block_size, block_size, block_size)``
    block_size : int
    shape : ``(n, n)``
    dtype : numpy dtype
    """

    def __init__(self, inverse_blocks, block_size):
        self.inverse_blocks = inverse_blocks
        self.block_size = int(block_size)
        n = inverse_blocks.shape[-3] * self.block_size
        self.shape = (n, n)
        self.dtype = np.dtype(inverse_blocks.dtype)

    def matvec(self, X):
        """``z = blockdiag(B_k^{-1}) x`` for ``X`` of shape ``(*batch, n)`` (or ``(n,)``)."""
        xp = get_array_module(X)
        bs = self.block_size
        Xb = X.reshape(X.shape[:-1] + (self.shape[0] // bs, bs, 1))  # (*batch, nb, bs, 1)
        Z = xp.matmul(self.inverse_blocks.astype(X.dtype, copy=False), Xb)
        return Z.reshape(Z.shape[:-3] + (self.shape[0],))

    __call__ = matvec

    def __repr__(self):
        return (f"BlockJacobiPreconditioner(n={self.shape[0]}, block_size={self.block_size}, "
                f"batch={tuple(self.inverse_blocks.shape[:-3])}, dtype={self.dtype})")


def _dense_blocks(xp, A, bs):
    n = A.shape[0]
    nb = n // bs
    A4 = A.reshape(nb, bs, nb, bs)
    # blocks[k] = A[k*bs:(k+1)*bs, k*bs:(k+1)*bs]
    return xp.ascontiguousarray(xp.diagonal(A4, axis1=0, axis2=2).transpose(2, 0, 1))


def _sparse_blocks(xp, A, bs, dtype):
    n = A.shape[0]
    nb = n // bs
    C = A.tocoo()
    C.sum_duplicates()
    rows, cols, data = C.row, C.col, C.data
    keep = (rows // bs) == (cols // bs)
    rows, cols, data = rows[keep], cols[keep], data[keep]
    blocks = xp.zeros((nb, bs, bs), dtype=dtype)
    blocks[rows // bs, rows % bs, cols % bs] = data.astype(dtype)  # unique entries after sum_duplicates
    return blocks


def block_jacobi_preconditioner(A, block_size):
    """Block-Jacobi preconditioner: the inverse of the block diagonal of ``A``.

    ``A`` is split into consecutive index blocks of ``block_size`` (``n`` must be a multiple of it);
    the diagonal blocks ``B_k = A[kb:(k+1)b, kb:(k+1)b]`` are inverted once (batched
    ``xp.linalg.inv``) and applied as a batched matmul: ``M r = blockdiag(B_k^{-1}) r``.

    Parameters
    ----------
    A : dense array ``(n, n)``, SciPy/cupyx sparse matrix, or an object with
        ``diagonal_blocks(block_size)`` returning ``(*batch, n // block_size, bs, bs)``.
    block_size : int
        Size ``b`` of the diagonal blocks (e.g. the number of labels ``L`` of a G-CRF).

    Returns
    -------
    BlockJacobiPreconditioner
        Object with ``shape``, ``dtype``, a batched ``matvec`` and ``__call__``; pass it as ``M``.
    """
    bs = int(block_size)
    if bs < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if hasattr(A, "diagonal_blocks") and callable(A.diagonal_blocks):
        blocks = asarray(A.diagonal_blocks(bs))
        xp = get_array_module(blocks)
        if blocks.ndim < 3 or blocks.shape[-1] != bs or blocks.shape[-2] != bs:
            raise ValueError(f"diagonal_blocks({bs}) returned shape {blocks.shape}; expected (*batch, nb, {bs}, {bs})")
    else:
        if _is_sparse(A):
            xp = get_array_module(A)
            dtype = compute_dtype(A.dtype)
        elif hasattr(A, "matvec") and not hasattr(A, "__array__"):
            raise TypeError(
                f"block_jacobi_preconditioner needs a dense or sparse matrix, or an object with "
                f"diagonal_blocks(block_size); got {type(A).__name__}"
            )
        else:
            A = asarray(A)
            xp = get_array_module(A)
            dtype = compute_dtype(A.dtype)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square, got shape {tuple(A.shape)}")
        n = A.shape[0]
        if n % bs:
            raise ValueError(f"the size of A, {n}, is not a multiple of block_size={bs}")
        if _is_sparse(A):
            blocks = _sparse_blocks(xp, A, bs, dtype)
        else:
            blocks = _dense_blocks(xp, A.astype(dtype, copy=False), bs)
    dtype = compute_dtype(blocks.dtype)
    try:
        inv = xp.linalg.inv(blocks.astype(dtype, copy=False))
    except np.linalg.LinAlgError as exc:  # a singular diagonal block
        raise ValueError(f"block_jacobi_preconditioner: a diagonal block is singular ({exc})") from exc
    return BlockJacobiPreconditioner(inv, bs)
