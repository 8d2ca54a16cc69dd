"""One pass over a parameter array: its finiteness and a fingerprint of its contents.

An operator built on a writeable NumPy array views it instead of copying it
(docs/guarantees.md, "Mutation and ownership of parameters").  Its results describe the
parameters as they are at each call: a solve recomputes the fingerprint of the viewed arrays
(one read of them) and, when it changed, re-validates them and drops everything cached from the
old values (certificates, red-black blocks, factorisations).

The fingerprint of the bit patterns ``u_i`` (``uint64``; ``float32`` bits widened) is

    ``h = sum_i ((u_i XOR (i * C1)) * C2)  mod 2**64``

with odd constants ``C1``, ``C2``.  For a fixed position ``i`` the term is a bijection of
``u_i``, so changing any single entry changes ``h``; the sum is position-dependent, so swapping
entries changes it too.  Unrelated simultaneous changes cancel with probability about
``2**-64``.  Being a sum, it can be computed in parallel chunks and combined (and fused into
other passes over the same entries: :func:`mix`).
"""
from __future__ import annotations

import numba
import numpy as np

from . import threads as threads_policy

__all__ = ["scan", "fingerprint", "mix", "hash_run", "C1", "C2", "PARALLEL_MIN_ENTRIES"]

C1 = np.uint64(0x9E3779B97F4A7C15)
C2 = np.uint64(0xBF58476D1CE4E5B9)

#: arrays with fewer entries are scanned on one thread
PARALLEL_MIN_ENTRIES = 1 << 20

_CHUNK = 1 << 16


@numba.njit(inline="always")
def mix(bits, index):  # pragma: no cover - compiled
    """The term of one entry: ``(u XOR (i * C1)) * C2`` (``uint64`` wrap-around)."""
    return (np.uint64(bits) ^ (np.uint64(index) * C1)) * C2


@numba.njit(inline="always")
def hash_run(bits, start):  # pragma: no cover - compiled
    """``sum_i mix(bits[i], start + i)`` over a 1-D run (vectorised: one loop, one job)."""
    h = np.uint64(0)
    for i in range(bits.size):
        h += mix(bits[i], start + i)
    return h


@numba.njit(inline="always", fastmath={"reassoc", "nsz", "contract"})
def _scan_run(values, bits, start):  # pragma: no cover - compiled
    """:func:`hash_run` of one run and whether all its entries are finite, in a single loop (one
    read of each entry): ``sum x * 0`` is 0 unless an entry is NaN/Inf."""
    h = np.uint64(0)
    s = values.dtype.type(0)
    for i in range(bits.size):
        h += mix(bits[i], start + i)
        s += values[i] * values.dtype.type(0)
    return h, s == 0


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan_nb(values, bits, partial, finite):  # pragma: no cover - compiled
    n = values.size
    nchunks = partial.size
    for c in numba.prange(nchunks):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        partial[c], finite[c] = _scan_run(values[lo:hi], bits[lo:hi], lo)


def _bits_view(flat):
    return flat.view(np.uint64 if flat.dtype.itemsize == 8 else np.uint32)


def scan(arr) -> tuple[bool, int]:
    """``(finite, fingerprint)`` of a C-contiguous float32/float64 NumPy array in one read."""
    flat = arr.reshape(-1)
    nchunks = max(1, -(-flat.size // _CHUNK))
    partial = np.empty(nchunks, dtype=np.uint64)
    finite = np.empty(nchunks, dtype=np.bool_)
    threads = 1 if flat.size < PARALLEL_MIN_ENTRIES else None
    with threads_policy.parallel_kernel(threads):
        _scan_nb(flat, _bits_view(flat), partial, finite)
    return bool(finite.all()), int(partial.sum(dtype=np.uint64))


def fingerprint(arrays) -> int:
    """The fingerprints of ``arrays`` (C-contiguous NumPy float arrays) combined (one read each)."""
    h = 0
    for k, arr in enumerate(arrays):
        h = (h * 1000003 + scan(arr)[1] + k) % (1 << 64)
    return h
