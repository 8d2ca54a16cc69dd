"""Videos longer than the temporal context: overlapping windows, averaged predictions (docs/design.md 3.6).

:func:`solve_video_windows` solves one :class:`VideoGCRF` per window ``[s, s + window)`` and averages
the predictions of every frame over the windows that contain it; the returned
:class:`VideoWindowsSolution` carries the backward pass of that averaging.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from ...backend import asarray, get_array_module
from ...solve import adjoint_solve, solve
from ..._validation import as_parameter, check_finite
from .operator import VideoGCRF

__all__ = ["solve_video_windows", "VideoWindowsSolution", "window_starts"]


def window_starts(n_frames: int, window: int, stride: int) -> list[int]:
    """First frames of the windows ``[s, s + window)`` covering ``n_frames`` frames.

    Windows start every ``stride`` frames; a last window ending at the last frame is added when
    the stride does not land there.
    """
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return starts


@dataclasses.dataclass(repr=False)
class VideoWindowsSolution:
    """The result of :func:`solve_video_windows`, with the backward pass of the averaging.

    Attributes
    ----------
    x : array, shape ``(*batch, F, L, H, W)``
        Per-frame predictions averaged over the windows that contain the frame.
    windows : list of (int, int)
        ``[start, stop)`` frame ranges of the windows.
    counts : numpy.ndarray, shape ``(F,)``
        Number of windows covering each frame.
    operators : list of VideoGCRF
        One system per window (a direct factorisation is cached on it for the backward pass).
    window_solutions : list of arrays
        ``x`` of each window system, shape ``(*batch, window, L, H, W)``.
    results : list of SolveResult
        The forward solve of each window.
    """

    x: Any
    windows: list
    counts: np.ndarray
    operators: list
    window_solutions: list
    results: list
    method: str
    solver_options: dict

    def __repr__(self):
        return (f"VideoWindowsSolution(frames={len(self.counts)}, windows={self.windows}, "
                f"method={self.method!r})")

    def backward(self, grad_x) -> dict:
        """Gradients of a loss ``L`` given ``dL/dx`` for the averaged prediction ``x``.

        ``x_f = (1/c_f) sum_{w containing f} x^{(w)}_f``, so window ``w`` receives
        ``dL/dx^{(w)}_f = dL/dx_f / c_f``; each window's adjoint solve
        ``g^{(w)} = M_w^{-1} dL/dx^{(w)}`` and contractions (docs/design.md section 5) are accumulated
        onto the frames (and ``lam``) they were taken from.

        Parameters
        ----------
        grad_x : array, shape of :attr:`x`

        Returns
        -------
        dict
            ``"b"``, ``"spatial"``, ``"temporal"`` (shaped like the inputs) and ``"lam"`` (shaped
            like the ``lam`` given).
        """
        first = self.operators[0]
        xp = first.xp
        gx = asarray(grad_x)
        if get_array_module(gx) is not xp:
            raise TypeError("grad_x lives on another device than the solution")
        if tuple(gx.shape) != tuple(self.x.shape):
            raise ValueError(f"grad_x must have the shape of x {tuple(self.x.shape)}; "
                             f"got {tuple(gx.shape)}")
        check_finite(gx, "grad_x")
        # dL/dx^{(w)}_f = dL/dx_f / c_f
        gx = gx.astype(first.dtype, copy=False) / xp.asarray(
            self.counts, dtype=first.dtype)[:, None, None, None]
        n_frames = len(self.counts)
        db = xp.zeros_like(self.x)
        dS = xp.zeros(first.batch_shape + (n_frames,) + first.spatial.shape[-4:], dtype=first.dtype)
        dT = xp.zeros(first.batch_shape + (n_frames,) + first.temporal.shape[-4:], dtype=first.dtype)
        dlam = None

        for (start, stop), op, xw in zip(self.windows, self.operators, self.window_solutions):
            g = adjoint_solve(op, gx[..., start:stop, :, :, :], method=self.method,
                              **self.solver_options).x
            grads = op.parameter_gradients(xw, g)
            db[..., start:stop, :, :, :] += g
            dS[..., start:stop, :, :, :, :] += grads["spatial"]
            dT[..., start:stop, :, :, :, :] += grads["temporal"]
            dlam = grads["lam"] if dlam is None else dlam + grads["lam"]
        return {"b": db, "spatial": dS, "temporal": dT, "lam": dlam}


def solve_video_windows(spatial, temporal, b, lam, *, window: int, stride: int = 1,
                        neighbourhood="fc", method: str = "auto", check_pd: bool = True,
                        **solver_options) -> VideoWindowsSolution:
    """Solve a video longer than the temporal context in overlapping windows of ``window`` frames.

    Window ``w`` covers frames ``[s_w, s_w + window)`` and is the :class:`VideoGCRF` system built
    from those frames' embeddings and unary scores; the prediction of frame ``f`` is the average
    ``x_f = (1/c_f) sum_{w containing f} x^{(w)}_f`` over the ``c_f`` windows containing it.

    Parameters
    ----------
    spatial : array, shape ``(*batch, F, Ds, L, H, W)``
    temporal : array, shape ``(*batch, F, Dt, L, H, W)``
    b : array, shape ``(*batch, F, L, H, W)``
        Unary scores of the ``F`` frames.
    lam : float or array of shape ``batch``
    window : int
        Frames per window, ``1 <= window <= F``.
    stride : int
        Frames between window starts, ``1 <= stride <= window`` (default 1: every window
        position); a last window ending at frame ``F - 1`` is always included.
    neighbourhood : "fc" or iterable of int
        Temporal neighbourhood inside a window (see :class:`VideoGCRF`).
    method : str
        Solve method of every window (:func:`gcrflinalg.solve`); ``"auto"`` by default, as there
        (the backward pass's ``"auto"`` reuses a factorisation the forward solve built).
    check_pd : bool
        Check every window system's positive definiteness.
    **solver_options
        Passed to :func:`gcrflinalg.solve` (``rtol``, ``maxiter``, ...).

    Returns
    -------
    VideoWindowsSolution
        ``.x`` the averaged predictions (shape of ``b``); ``.backward(dL/dx)`` the gradients.
    """
    S = as_parameter(spatial, "spatial", min_ndim=5)
    xp = get_array_module(S)
    T = as_parameter(temporal, "temporal", min_ndim=5, xp=xp)
    n_frames = S.shape[-5]
    batch = tuple(S.shape[:-5])
    if T.shape[-5] != n_frames or tuple(T.shape[:-5]) != batch or T.shape[-3:] != S.shape[-3:]:
        raise ValueError(f"temporal must have shape (*batch, F, Dt, L, H, W) matching spatial "
                         f"{tuple(S.shape)}; got {tuple(T.shape)}")
    b_arr = asarray(b)
    if get_array_module(b_arr) is not xp:
        raise TypeError("b lives on another device than the embeddings")
    expected = batch + (n_frames,) + tuple(S.shape[-3:])
    if tuple(b_arr.shape) != expected:
        raise ValueError(f"b must have shape (*batch, F, L, H, W) = {expected} to match the "
                         f"embeddings; got {tuple(b_arr.shape)}")
    for name, val in (("window", window), ("stride", stride)):
        if not isinstance(val, numbers.Integral) or isinstance(val, bool):
            raise TypeError(f"{name} must be an int; got {val!r}")
    if not 1 <= window <= n_frames:
        raise ValueError(f"window must be between 1 and the number of frames F = {n_frames}; "
                         f"got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and window = {window} (larger strides leave "
                         f"frames uncovered); got {stride}")
    starts = window_starts(n_frames, int(window), int(stride))
    windows = [(s, s + int(window)) for s in starts]
    counts = np.zeros(n_frames, dtype=np.int64)
    for s, e in windows:
        counts[s:e] += 1
    operators, xs, results = [], [], []
    x = None
    for s, e in windows:
        op = VideoGCRF(S[..., s:e, :, :, :, :], T[..., s:e, :, :, :, :], lam, neighbourhood)
        res = solve(op, b_arr[..., s:e, :, :, :], method=method, check_pd=check_pd,
                    **solver_options)
        if x is None:
            x = xp.zeros(expected, dtype=op.dtype)
        x[..., s:e, :, :, :] += res.x
        operators.append(op)
        xs.append(res.x)
        results.append(res)
    x /= xp.asarray(counts, dtype=x.dtype)[:, None, None, None]
    return VideoWindowsSolution(x=x, windows=windows, counts=counts, operators=operators,
                                window_solutions=xs, results=results, method=method,
                                solver_options=dict(solver_options))
