"""reach: HJ reachability value functions for pairwise multi-agent safety.

Kept light on purpose: importing ``reach`` (or ``reach.store`` / ``reach.models``) never imports JAX.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["open_store", "__version__"]


def open_store(path=None):
    """Open the value-function store at ``path`` (default ``$REACH_STORE`` or ``./store``)."""
    from reach.store import open_store as _open_store

    return _open_store(path)
