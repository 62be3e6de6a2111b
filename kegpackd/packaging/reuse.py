"""What a job need not make again: the latest image when nothing changed
(``skip_unchanged``), a layer the engine has, a tag the registry has.

Apart from the stages because each is a decision on what the engine or registry already
holds, made by comparing layers, configs and references; getting one wrong ships a stale
image, so they sit together where they can be read against each other.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kegpackd.engine.models import ContainerInfo, ImageInfo
from kegpackd.engine.naming import parse_reference
from kegpackd.labels import JOB_LABEL, SOURCE_STARTED_AT_LABEL
from kegpackd.packaging.base import COPIED_CONFIG_KEYS, Base, final_config
from kegpackd.packaging.retention import created_ns, repository_of

# Provenance that differs on every job: not a change of the image.
PROVENANCE_LABELS = (JOB_LABEL, SOURCE_STARTED_AT_LABEL, "org.opencontainers.image.created")


def latest_in(own: list[ImageInfo], repository: str) -> ImageInfo | None:
    """The newest of kegpackd's images of a container (``own``) with a tag in ``repository``."""
    wanted = repository_of(repository)
    mine = [i for i in own if any(repository_of(t) == wanted for t in i.repo_tags)]
    return max(mine, key=created_ns, default=None)


def same_image(image: ImageInfo, layers: list[str], base: Base, info: ContainerInfo) -> bool:
    """Same layers, and the same runtime config but for the provenance labels."""
    if list(image.layers) != layers:
        return False
    wanted = final_config(info, "", datetime.now(UTC), base.packaged)
    for key in COPIED_CONFIG_KEYS:
        if (image.config.get(key) or None) != (wanted.get(key) or None):
            return False
    have = dict(image.config.get("Labels") or {})
    for label in PROVENANCE_LABELS:
        have.pop(label, None)
        wanted["Labels"].pop(label, None)
    return bool(have == wanted["Labels"])


def has_layer(own: list[ImageInfo], base: Base, digest: str) -> bool:
    """One of kegpackd's images of the container has this layer on this base: the engine
    has it, and an archive without its bytes loads."""
    chain = [*base.image.layers, digest]
    return any(list(image.layers) == chain for image in own)


def pushed_digest(image: ImageInfo, reference: str) -> str | None:
    """The digest ``reference`` was pushed with, when it already named ``image``."""
    if reference not in {canonical(t) for t in image.repo_tags if repository_of(t)}:
        return None
    repository = repository_of(reference)
    for entry in image.repo_digests:
        name, _, digest = entry.partition("@")
        if repository_of(name) == repository:
            return digest
    return None


def canonical(repo_tag: str) -> str:
    """``web:1`` → ``docker.io/library/web:1``: as ImageNames spells references, and as
    the containerd store names images (in full, ``docker.io/`` for no registry)."""
    reference = parse_reference(repo_tag, "image tag")
    return f"{reference.repository}:{reference.tag}"
