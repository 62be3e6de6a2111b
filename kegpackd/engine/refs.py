"""What a caller's container or image reference may be, as one path segment of an engine URL.

Apart from the client because its reason to change is the grammar of names, not the requests:
the engine's router takes the rest of the path as the endpoint, so an unchecked reference
could reach another one.
"""

from __future__ import annotations

import re
import urllib.parse

from kegpackd.engine.naming import parse_reference
from kegpackd.errors import InvalidValueError

# A container is named as Docker names it (an optional leading '/') or by (a prefix of) its
# hex id, which the same class covers. Anything else would reach another engine endpoint.
_CONTAINER_REF = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
# An image id, full (with or without its algorithm) or a prefix of at least 12 hex digits.
_IMAGE_ID = re.compile(r"(?:sha256:)?[a-f0-9]{12,64}")


def container_segment(ref: str) -> str:
    """``ref`` as one path segment of a container endpoint, if it names a container.

    The engine's router takes the rest of the path as the endpoint: ``../events?`` would
    open an event stream, ``../containers/x/archive?path=/`` read a whole file system.
    """
    if not _CONTAINER_REF.fullmatch(ref):
        raise InvalidValueError(
            "container",
            ref,
            "a container is named by its name ([a-zA-Z0-9][a-zA-Z0-9_.-]*) or its hex id",
        )
    return urllib.parse.quote(ref, safe="")


def image_segment(ref: str) -> str:
    """``ref`` as one path segment of an image endpoint, if it is an image id or reference."""
    if not _IMAGE_ID.fullmatch(ref):
        try:
            parse_reference(ref, "image")
        except InvalidValueError as exc:
            raise InvalidValueError(
                "image", ref, f"not an image id or reference ({exc.reason})"
            ) from None
    # Quoted whole: the engine decodes the path before it routes it, '/' included.
    return urllib.parse.quote(ref, safe="")
