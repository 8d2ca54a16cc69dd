"""One pass over a parameter array: its finiteness and a fingerprint of its contents.

An operator built on a writeable NumPy array views it instead of copying it
(docs/guarantees.md, "Mutation and ownership of parameters").  Its results describe the
parameters as they are at each call: a solve recomputes the fingerprint of the viewed arrays
(one read of them) and, when it changed, re-validates them and drops everything cached from the
old values (certificates, red-black blocks, factorisations).

The fingerprint is taken over the array's data read as 64-bit words ``u_w`` (one ``float64``
entry, or two consecutive ``float32`` entries with the first in the low half; an odd ``float32``
count ends with its last entry alone in the low half):

    ``h = sum_w ((u_w XOR (w * C1)) * C2)  mod 2**64``

with odd constants ``C1``, ``C2``.  For a fixed position ``w`` the term is a bijection of
``u_w``, so changing any single entry changes ``h``; the sum is position-dependent, so swapping
entries changes it too (a swap inside one ``float32`` pair changes that word).  Unrelated
simultaneous changes cancel with probability about ``2**-64``.  Being a sum, it can be computed
in parallel chunks and combined (and fused into other passes over the same entries:
:func:`hash_words`); reading ``float32`` data two entries per word halves the integer work.
"""
from __future__ import annotations

import numba
import numpy as np

from . import threads as threads_policy

__all__ = ["scan", "all_finite", "fingerprint", "tail_term", "mix", "hash_words", "words_of", "C1", "C2", "PARALLEL_MIN_ENTRIES"]

C1 = np.uint64(0x9E3779B97F4A7C15)
C2 = np.uint64(0xBF58476D1CE4E5B9)

#: arrays with fewer entries are scanned on one thread
PARALLEL_MIN_ENTRIES = 1 << 20

_CHUNK = 1 << 16  # words per parallel chunk


@numba.njit(inline="always")
def mix(word, index):  # pragma: no cover - compiled
    """The term of one word: ``(u XOR (w * C1)) * C2`` (``uint64`` wrap-around)."""
    return (np.uint64(word) ^ (np.uint64(index) * C1)) * C2


@numba.njit(inline="always")
def hash_words(words, lo, hi):  # pragma: no cover - compiled
    """``sum_w mix(words[w], w)`` over the words ``lo <= w < hi`` of a flat word array."""
    h = np.uint64(0)
    for w in range(lo, hi):
        h += mix(words[w], w)
    return h


#: exponent bits of a word's entries: an entry is NaN or Inf exactly when all of its are set
#: (float64: one entry per word; float32: the low and the high half)
_EXPONENTS = {8: (np.uint64(0x7FF0000000000000), np.uint64(0x7FF0000000000000)),
              4: (np.uint64(0x000000007F800000), np.uint64(0x7F80000000000000))}


@numba.njit(inline="always")
def _nonfinite(u, first, second):  # pragma: no cover - compiled
    """1 when an entry of word ``u`` is NaN or Inf (its exponent bits ``first`` or ``second`` all
    set), else 0."""
    return np.uint64((u & first) == first) | np.uint64((u & second) == second)


@numba.njit(inline="always")
def _scan_words(words, lo, hi, first, second):  # pragma: no cover - compiled
    """``(hash_words(words, lo, hi), n)``, ``n > 0`` when an entry of the words is NaN or Inf:
    one integer loop, one load per word."""
    h = np.uint64(0)
    bad = np.uint64(0)
    for w in range(lo, hi):
        u = words[w]
        h += mix(u, w)
        bad |= _nonfinite(u, first, second)
    return h, bad


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan_nb(words, first, second, partial, bad):  # pragma: no cover - compiled
    nchunks = partial.size
    for c in numba.prange(nchunks):
        lo = c * _CHUNK
        partial[c], bad[c] = _scan_words(words, lo, min(words.size, lo + _CHUNK), first, second)


@numba.njit(cache=True, nogil=True, parallel=True)
def _finite_nb(words, first, second, bad):  # pragma: no cover - compiled
    nchunks = bad.size
    for c in numba.prange(nchunks):
        acc = np.uint64(0)
        for w in range(c * _CHUNK, min(words.size, (c + 1) * _CHUNK)):
            acc |= _nonfinite(words[w], first, second)
        bad[c] = acc


def all_finite(arr) -> bool:
    """Whether a C-contiguous float32/float64 NumPy array holds no NaN or Inf (one read, integer
    tests of the exponent bits, no fingerprint)."""
    flat = arr.reshape(-1)
    words, tail = words_of(flat)
    bad = np.zeros(max(1, -(-words.size // _CHUNK)), dtype=np.uint64)
    first, second = _EXPONENTS[flat.dtype.itemsize]
    with threads_policy.parallel_kernel(1 if flat.size < PARALLEL_MIN_ENTRIES else None):
        _finite_nb(words, first, second, bad)
    return not bad.any() and (tail < 0 or bool(np.isfinite(flat[-1])))


def words_of(flat):
    """``(words, tail)``: the 64-bit words of a flat C-contiguous float32/float64 array (see the
    module docstring) and, for an odd float32 count, the last entry's bits (else -1)."""
    if flat.dtype.itemsize == 8:
        return flat.view(np.uint64), -1
    if flat.size % 2:
        return flat[:-1].view(np.uint64), int(flat[-1:].view(np.uint32)[0])
    return flat.view(np.uint64), -1


def scan(arr) -> tuple[bool, int]:
    """``(finite, fingerprint)`` of a C-contiguous float32/float64 NumPy array in one read."""
    flat = arr.reshape(-1)
    words, tail = words_of(flat)
    nchunks = max(1, -(-words.size // _CHUNK))
    partial = np.zeros(nchunks, dtype=np.uint64)
    bad = np.zeros(nchunks, dtype=np.uint64)
    first, second = _EXPONENTS[flat.dtype.itemsize]
    threads = 1 if flat.size < PARALLEL_MIN_ENTRIES else None
    with threads_policy.parallel_kernel(threads):
        _scan_nb(words, first, second, partial, bad)
    h = int(partial.sum(dtype=np.uint64))
    finite = not bad.any()
    if tail >= 0:  # an odd float32 count: the last entry is a word of its own
        h = (h + tail_term(tail, words.size)) % (1 << 64)
        finite = finite and bool(np.isfinite(flat[-1]))
    return finite, h


def tail_term(tail: int, index: int) -> int:
    """The fingerprint term of an odd float32 count's last entry (its bits ``tail``), the word at
    ``index``: :func:`mix` evaluated on the host."""
    c1, c2 = int(C1), int(C2)
    return (((tail ^ ((index * c1) % (1 << 64))) * c2) % (1 << 64))


def fingerprint(arrays) -> int:
    """The fingerprints of ``arrays`` (C-contiguous NumPy float arrays) combined (one read each)."""
    h = 0
    for k, arr in enumerate(arrays):
        h = (h * 1000003 + scan(arr)[1] + k) % (1 << 64)
    return h
