"""An engine that answers a load before the upload ends: the job sees the engine's error.

When the engine's disk fills while it receives ``POST /images/load``, it answers with the
error and stops reading. aiohttp then cancels its writer task, which is iterating our body;
that CancelledError must not be taken for the job's own cancellation (a clean-clone run saw
a disk-full job end ``cancelled`` instead of ``failed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from kegpackd.engine.client import Engine
from kegpackd.errors import EngineError

ERROR = "write /var/lib/docker/tmp/x: no space left on device"


async def _answer_early(request: web.Request) -> web.StreamResponse:
    """Read one chunk of the upload, then answer with the error and close."""
    await request.content.readany()
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.force_close()
    await response.prepare(request)
    await response.write(
        b'{"errorDetail":{"message":"%s"},"error":"%s"}\n' % (ERROR.encode(), ERROR.encode())
    )
    await response.write_eof()
    return response


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"ApiVersion": "1.41", "Version": "20.10.24"})


async def _endless() -> AsyncGenerator[bytes, None]:
    while True:
        yield b"\0" * 65536
        await asyncio.sleep(0.001)


@pytest.mark.asyncio
async def test_an_engine_error_mid_upload_is_an_engine_error_not_a_cancellation(
    tmp_path: Path,
) -> None:
    """The engine answers ENOSPC while the body still streams: EngineError naming it."""
    app = web.Application()
    app.router.add_post("/{version}/images/load", _answer_early)
    app.router.add_get("/version", _version)
    runner = web.AppRunner(app)
    await runner.setup()
    socket = tmp_path / "engine.sock"
    await web.UnixSite(runner, str(socket)).start()
    try:
        async with Engine.open(f"unix://{socket}") as engine:
            for _ in range(20):
                with anyio.fail_after(10), pytest.raises(EngineError, match="no space left"):
                    await engine.load_archive(_endless())
    finally:
        await runner.cleanup()
