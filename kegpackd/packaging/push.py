"""Pushing the final image's tags, each retried on a registry's passing errors.

Apart from the stages because the registry side (credentials, retries and their backoff,
which tags a registry already has) changes with the registries, not with the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from kegpackd.backoff import Backoff
from kegpackd.config import Config
from kegpackd.engine.credentials import resolve_credentials
from kegpackd.engine.models import ImageInfo
from kegpackd.engine.naming import ImageNames
from kegpackd.engine.port import EnginePort
from kegpackd.errors import RegistryError
from kegpackd.packaging.jobs import JobResult, Progress, Stage
from kegpackd.packaging.reuse import pushed_digest

log = logging.getLogger(__name__)

PUSH_BACKOFF_START = 0.5
PUSH_BACKOFF_CAP = 10.0


class Push:
    """One job's push; the digests and retries go into its result."""

    def __init__(
        self,
        engine: EnginePort,
        config: Config,
        docker_config_dir: Path | None,
        progress: Progress,
        result: JobResult,
    ) -> None:
        self.engine = engine
        self.config = config
        self.docker_config_dir = docker_config_dir
        self.progress = progress
        self.result = result

    async def run(self, names: ImageNames, latest: ImageInfo | None) -> None:
        """Push every tag; for an unchanged image, skip a tag the registry already has (it
        was on this image, which was pushed to this repository before)."""
        credentials = await resolve_credentials(
            names.registry, self.config.registries.auth, self.docker_config_dir
        )
        header = credentials.auth_header(names.registry) if credentials else None
        for tag in names.tags:
            reference = f"{names.repository}:{tag}"
            canonical = f"{names.repository.repository}:{tag}"
            known = pushed_digest(latest, canonical) if latest is not None else None
            if known is not None:
                self.progress.stage(Stage.PUSH, f"{reference}: the registry has it")
                self.result.digests[reference] = known
                continue
            self.progress.stage(Stage.PUSH, reference)
            self.result.digests[reference] = await self._push_one(names, tag, header)

    async def _push_one(self, names: ImageNames, tag: str, header: str | None) -> str:
        """Push one tag, retrying registry errors with capped exponential backoff."""
        reference = f"{names.repository}:{tag}"
        backoff = Backoff(PUSH_BACKOFF_START, PUSH_BACKOFF_CAP)
        while True:
            try:
                digest = await self.engine.push(
                    names.repository.repository, tag, header, lambda _entry: None
                )
                if digest is None:
                    raise RegistryError(f"push {reference}: the engine reported no digest")
                return digest
            except RegistryError as exc:
                if not exc.retryable or backoff.attempt >= self.config.packaging.push_retries:
                    raise
                delay = backoff.next()
                self.result.push_retries += 1
                log.warning("%s; retry %d in %.1fs", exc, backoff.attempt, delay)
                await anyio.sleep(delay)
