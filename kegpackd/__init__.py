"""kegpackd: package a Docker container together with its mounted volumes into an image."""

from __future__ import annotations

from importlib.metadata import version

# Stated once, in pyproject.toml.
__version__ = version("kegpackd")
