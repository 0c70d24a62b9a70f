"""The one exception type a user sees: a one-line message that names the problem and the fix."""

from __future__ import annotations

__all__ = ["PrunebertError"]


class PrunebertError(Exception):
    """A user-facing error; the CLI prints its message on one line and exits with status 2."""
