"""``ssh://`` engines, reached the way the docker CLI reaches them, behind the engine boundary.

The docker CLI runs ``ssh [-l user] [-p port] -- host docker system dial-stdio`` and speaks
HTTP over the process's stdin and stdout. kegpackd does the same, one ``ssh`` per HTTP
connection: it serves a unix socket in a private directory (0700, made by ``mkdtemp``) and
hands aiodocker that socket, so the rest of the engine code is unchanged. ``ssh`` is the
system's own, so ``~/.ssh/config``, keys, ``ssh-agent`` and ``known_hosts`` work as they do
for the docker CLI. It runs with ``BatchMode=yes``: never a password or passphrase prompt
(a daemon has no one to answer it), a refusal instead, reported with the reason ssh gave.

Only used by ``engine``; imports nothing of kegpackd's but ``endpoint`` and ``errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from kegpackd.engine.endpoint import Endpoint
from kegpackd.errors import EngineUnreachable

# What ssh prints when it fails is short; more is noise (or a hostile server's banner).
_STDERR_LIMIT = 4096
_CHUNK = 64 * 1024
HINT = (
    "ssh runs with BatchMode=yes and never asks for a password or passphrase: "
    "use a key ssh finds by itself or ssh-agent"
)


def ssh_argv(endpoint: Endpoint) -> list[str]:
    """The ssh command line for ``endpoint``'s ``ssh://[user@]host[:port]``, as the docker
    CLI builds it; a password, path or query in the URL is refused as it refuses them."""
    url = urllib.parse.urlsplit(endpoint.host)
    where = endpoint.where
    try:
        port = url.port
    except ValueError:
        raise EngineUnreachable(f"Docker engine at {where}: not a port number") from None
    if url.password is not None:
        raise EngineUnreachable(f"Docker engine at {where}: ssh:// takes no password; {HINT}")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise EngineUnreachable(f"Docker engine at {where}: ssh:// takes [user@]host[:port] only")
    if not url.hostname:
        raise EngineUnreachable(f"Docker engine at {where}: no host name")
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30"]
    if url.username:
        argv += ["-l", url.username]
    if port is not None:
        argv += ["-p", str(port)]
    return [*argv, "--", url.hostname, "docker", "system", "dial-stdio"]


class Bridge:
    """A unix socket whose every connection is one ``ssh … docker system dial-stdio``."""

    def __init__(self, endpoint: Endpoint, directory: Path) -> None:
        self.argv = ssh_argv(endpoint)
        self.socket = directory / "engine.sock"
        # The last failure of ssh itself (exit status and what it said), for the error
        # the engine raises when a connection closes without an answer.
        self.failure: str | None = None
        self._processes: set[asyncio.subprocess.Process] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay one connection through a fresh ssh until either side is done."""
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self.failure = f"cannot run ssh: {exc.strerror}"
            writer.close()
            return
        self._processes.add(process)
        try:
            await self._relay(process, reader, writer)
        finally:
            self._processes.discard(process)
            writer.close()
            await _stop(process)

    async def _relay(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        # All three are pipes (see serve()).
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        head: list[bytes] = []
        read_all = anyio.Event()

        async def collect() -> None:
            assert process.stderr is not None
            head.append(await _head(process.stderr, _STDERR_LIMIT))
            read_all.set()

        async with anyio.create_task_group() as group:
            group.start_soon(_pump, reader, process.stdin)
            group.start_soon(collect)
            answered = await _copy_out(process.stdout, writer)
            # ssh exits right after its output ends; one that does not is stopped by serve().
            with anyio.move_on_after(5) as waiting:
                status = await process.wait()
                await read_all.wait()  # stderr ends with the process
            group.cancel_scope.cancel()  # the client's side may still be open: stop pumping
        if waiting.cancelled_caught:
            return
        said = head[0].decode(errors="replace").strip()
        if not answered and status != 0:
            last = said.splitlines()[-1] if said else "no message"
            self.failure = f"ssh failed (exit status {status}): {last}; {HINT}"
        elif answered:
            self.failure = None

    async def close(self) -> None:
        for process in list(self._processes):
            await _stop(process)


async def _pump(reader: asyncio.StreamReader, stdin: asyncio.StreamWriter) -> None:
    """The client's bytes to ssh; its end of file is ssh's (dial-stdio half-closes)."""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(_CHUNK):
            stdin.write(chunk)
            await stdin.drain()
        stdin.close()


async def _head(stream: asyncio.StreamReader, limit: int) -> bytes:
    """The first ``limit`` bytes of ``stream``, read to its end (ssh must not block on it)."""
    kept = b""
    while chunk := await stream.read(_CHUNK):
        kept = (kept + chunk)[:limit]
    return kept


async def _copy_out(stdout: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """ssh's output to the client until it ends or the client goes; whether any came."""
    answered = False
    with contextlib.suppress(ConnectionError):
        while chunk := await stdout.read(_CHUNK):
            answered = True
            writer.write(chunk)
            await writer.drain()
    return answered


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End an ssh whose connection is over (it would otherwise wait on the engine)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def bridge(endpoint: Endpoint) -> AsyncIterator[Bridge]:
    """A running bridge to ``endpoint``; its directory and processes are gone after."""
    directory = Path(tempfile.mkdtemp(prefix="kegpackd-ssh-"))
    try:
        opened = Bridge(endpoint, directory)
        try:
            server = await asyncio.start_unix_server(opened.serve, path=str(opened.socket))
        except OSError as exc:
            raise EngineUnreachable(
                f"Docker engine at {endpoint.where}: cannot serve the ssh bridge at "
                f"{opened.socket}: {exc.strerror}"
            ) from None
        try:
            yield opened
        finally:
            server.close()
            await opened.close()
            await server.wait_closed()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
