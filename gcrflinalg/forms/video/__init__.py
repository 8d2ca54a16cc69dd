"""The spatio-temporal (video) G-CRF (docs/design.md 3.6).

- :mod:`.operator`: :class:`VideoGCRF` (products with the cached temporal message, exact capacitance
  solve and PD test, gradients);
- :mod:`.temporal`: temporal neighbourhoods and :func:`frame_coupling_matrix`;
- :mod:`.kernels`: the compiled Gauss–Seidel sweep;
- :mod:`.windows`: :func:`solve_video_windows` for videos longer than the temporal context.
"""
from .operator import VideoGCRF
from .temporal import frame_coupling_matrix
from .windows import VideoWindowsSolution, solve_video_windows, window_starts

__all__ = ["VideoGCRF", "frame_coupling_matrix", "solve_video_windows", "VideoWindowsSolution", "window_starts"]
