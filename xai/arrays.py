"""Read-only results: the one helper every module uses to hand out arrays callers cannot change.

Results are shared (cached per image, per model, across sessions), so the arrays they hold are made
read-only: a caller that wants to change one takes a copy. C-contiguous too, so encoders and OpenCV take
them without a copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["read_only"]


def read_only(a: Any, dtype: DTypeLike | None = None) -> np.ndarray:
    """``a`` as a C-contiguous, read-only numpy array (cast to ``dtype`` when given).

    Copies only when ``a`` is not C-contiguous or has another dtype; otherwise the returned array is
    ``a`` itself with its write flag cleared, so pass arrays you hand over, not ones you keep writing.
    A torch tensor is detached and moved to the CPU first.
    """
    if hasattr(a, "detach"):  # a torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    out = np.ascontiguousarray(a, dtype=dtype)
    out.setflags(write=False)
    return out
