"""The precision-matrix forms of gcrflinalg, one sub-package or module per family.

- :mod:`gcrflinalg.forms.grid`: sparse grid, general ``L x L`` blocks and Potts (docs/design.md 3.1, 3.2);
- :mod:`gcrflinalg.forms.multires`: multi-resolution pyramids of grid levels (3.3);
- :mod:`gcrflinalg.forms.lowrank`: dense low-rank from embeddings, general and Potts (3.4, 3.5);
- :mod:`gcrflinalg.forms.video`: spatio-temporal video, with the windowed solve (3.6);
- :mod:`gcrflinalg.forms.registry`: the table of forms that the rest of the package reads.

This package imports nothing until a form is used: ``gcrflinalg.forms.grid`` loads (and compiles)
the grid kernels on first use only.
"""
from .registry import FORMS, FormSpec, get_form

__all__ = ["FORMS", "FormSpec", "get_form"]
