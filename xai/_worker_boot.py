"""The decoders' fork server imports this first (``xai.sandboxed_decoder.PRELOAD``): it runs :func:`xai.startup.boot`.

A fork server can only *import* modules before it forks workers, so this module's import is the fork
server's start-up call. What :func:`~xai.startup.boot` changes and why (workers skip the parent's
``__main__``; pydicom never logs identifiers) is documented in :mod:`xai.startup`, the one home of the
library's process-wide settings.
"""

from __future__ import annotations

from xai.startup import boot

boot()
