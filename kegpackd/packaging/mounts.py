"""Which mounts of a container a job packages, and what kind of file each one is."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from kegpackd.engine.models import ContainerInfo
from kegpackd.engine.port import EnginePort
from kegpackd.errors import InvalidValueError, PackagingError
from kegpackd.packaging.options import JobOptions

PACKAGEABLE_MOUNTS = ("bind", "volume")


@dataclass(frozen=True)
class SelectedMount:
    destination: str
    is_dir: bool

    @property
    def parent(self) -> str:
        return posixpath.dirname(self.destination) or "/"

    @property
    def root_name(self) -> str:
        return posixpath.basename(self.destination)


def is_within(path: str, ancestor: str) -> bool:
    """Whether ``path`` is ``ancestor`` or below it (both normalised)."""
    return ancestor in ("/", path) or path.startswith(ancestor.rstrip("/") + "/")


def packaged_destinations(info: ContainerInfo, selected: list[SelectedMount]) -> frozenset[str]:
    """Every mount of ``info`` whose content the selected ones carry (nested ones too)."""
    return frozenset(
        m.destination
        for m in info.mounts
        if any(is_within(posixpath.normpath(m.destination), s.destination) for s in selected)
    )


async def select_mounts(
    engine: EnginePort, info: ContainerInfo, options: JobOptions
) -> list[SelectedMount]:
    """Choose the mounts to copy; a mount inside another chosen one travels with it.

    The engine mounts every volume into the container's root before archiving,
    so the archive of /data already holds the content of a mount at /data/sub.
    """
    by_destination = {m.destination: m for m in info.mounts}
    if options.paths is None:
        wanted = [m.destination for m in info.mounts if m.type in PACKAGEABLE_MOUNTS]
    else:
        wanted = list(options.paths)
        for path in wanted:
            mount = by_destination.get(path)
            if mount is None:
                raise InvalidValueError(
                    options.paths_source,
                    path,
                    f"not a mount of container {info.name} "
                    f"(its mounts: {', '.join(sorted(by_destination)) or 'none'})",
                )
            if mount.type not in PACKAGEABLE_MOUNTS:
                raise InvalidValueError(
                    options.paths_source, path, f"is a {mount.type} mount, which has no content"
                )
    selected: list[SelectedMount] = []
    for path in sorted(set(wanted)):
        if any(is_within(path, s.destination) for s in selected):
            continue
        stat = await engine.stat_path(info.id, path)
        if stat is None:
            raise PackagingError(f"mount {path} of container {info.name} cannot be read")
        if stat.is_special:
            if options.paths is not None:
                raise InvalidValueError(
                    options.paths_source, path, "is a socket or device, which has no content"
                )
            continue
        selected.append(SelectedMount(path, stat.is_dir))
    if not selected:
        raise PackagingError(
            f"nothing to package: container {info.name} has no bind mount or volume with content"
        )
    return selected
