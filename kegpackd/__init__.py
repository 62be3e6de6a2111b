"""kegpackd: package a Docker container together with its mounted volumes into an image."""

from __future__ import annotations

__version__ = "0.2.0"
