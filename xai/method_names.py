"""The built-in explanation methods' code names, in the order pages, exports and sessions list them.

A leaf module (no torch) so a page can name the methods before torch has loaded; :data:`xai.engine.METHODS`
is this tuple. The methods themselves (formulas, papers) are in :mod:`xai.engine`.
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")
