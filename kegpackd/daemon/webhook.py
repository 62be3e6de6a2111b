"""Job-end notifications: one signed POST per finished job, to the operator's webhook.

The body is the job as ``/v1/jobs`` shows it (no secret). Each attempt carries
``X-Kegpack-Timestamp`` (Unix seconds); with a secret, the header
``X-Kegpack-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` lets the
receiver check that kegpackd sent it, and when (as Stripe's webhooks do): a captured
notification replayed later fails the receiver's freshness check. Redirects are never
followed (a 3xx is a failed delivery): a redirect would carry the signed request to an
address the operator did not configure. A job never waits for this: the job-event
subscriber only queues the body, and one task delivers in order, each attempt bounded in
time, a bounded number of retries with backoff; what cannot be delivered is counted and
logged (by the URL's host only: webhook URLs often carry a token in the path).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from kegpackd import __version__
from kegpackd.backoff import Backoff
from kegpackd.config import NotifyConfig
from kegpackd.daemon.metrics import Metrics
from kegpackd.packaging.jobs import EventKind, JobEvent, job_json

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kegpack-Signature"
TIMESTAMP_HEADER = "X-Kegpack-Timestamp"
BACKLOG = 100
BACKOFF_START = 0.5
BACKOFF_CAP = 10.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The header value a receiver recomputes to verify a notification: the timestamp is
    signed with the body, so that it cannot be changed to replay an old one."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _shown(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


class _Retryable(Exception):
    pass


class Notifier:
    def __init__(self, config: NotifyConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, bytes]](BACKLOG)

    @property
    def enabled(self) -> bool:
        return self.config.webhook_url is not None

    def on_job_event(self, event: JobEvent) -> None:
        """Queue the finished job's notification (never waits, never raises)."""
        record = event.record
        if not self.enabled or event.kind != EventKind.FINISHED:
            return
        if str(record.state) not in self.config.on:
            return
        body = json.dumps(job_json(record), separators=(",", ":")).encode()
        try:
            self._send.send_nowait((record.request.job_id, body))
        except anyio.WouldBlock:
            self.metrics.notifications.labels("dropped").inc()
            log.warning(
                "notification for job %s dropped: %d waiting", record.request.job_id, BACKLOG
            )
        except anyio.ClosedResourceError:
            self.metrics.notifications.labels("dropped").inc()

    def close(self) -> None:
        """No more jobs: ``run`` delivers what is queued, then returns."""
        self._send.close()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._receive:
            async for job_id, body in self._receive:
                delivered = await self._deliver(job_id, body)
                self.metrics.notifications.labels("sent" if delivered else "failed").inc()

    async def _deliver(self, job_id: str, body: bytes) -> bool:
        url = self.config.webhook_url
        assert url is not None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"kegpackd/{__version__}",
            "X-Kegpack-Event": "job.finished",
        }
        backoff = Backoff(BACKOFF_START, BACKOFF_CAP)
        while True:
            try:
                await _post(url, body, self._signed(headers, body), self.config.timeout)
            except _Retryable as exc:
                if backoff.attempt >= self.config.retries:
                    log.warning(
                        "notification for job %s to %s failed after %d attempt(s): %s",
                        job_id,
                        _shown(url),
                        backoff.attempt + 1,
                        exc,
                    )
                    return False
                await anyio.sleep(backoff.next())
            except _Refused as exc:
                log.warning("notification for job %s to %s refused: %s", job_id, _shown(url), exc)
                return False
            else:
                log.debug("notification for job %s sent to %s", job_id, _shown(url))
                return True

    def _signed(self, headers: dict[str, str], body: bytes) -> dict[str, str]:
        """The headers of one attempt: its own timestamp, and the signature over it."""
        timestamp = str(int(time.time()))
        signed = {**headers, TIMESTAMP_HEADER: timestamp}
        if self.config.secret is not None:
            signed[SIGNATURE_HEADER] = signature(self.config.secret.reveal(), timestamp, body)
        return signed


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx stays the answer (an HTTPError): the signed POST goes nowhere else."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# No proxy from the environment, no redirect: the webhook is the operator's configured address.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


async def _post(url: str, body: bytes, headers: dict[str, str], seconds: float) -> None:
    """One attempt, in a worker thread with urllib (aiohttp stays the engine boundary's),
    bounded to ``seconds`` in all: the socket's timeout ends the thread, the deadline ends
    the wait."""

    def attempt() -> int:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=seconds) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    try:
        with anyio.fail_after(seconds):
            status = await anyio.to_thread.run_sync(attempt, abandon_on_cancel=True)
    except TimeoutError:
        raise _Retryable("timed out") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(type(exc).__name__) from None
    if status < 300:
        return
    reason = f"HTTP {status}" + (" (redirects are not followed)" if status < 400 else "")
    if status >= 500 or status in (408, 429):
        raise _Retryable(reason)
    raise _Refused(reason)


class _Refused(Exception):
    """A 4xx answer: the receiver will not take it, trying again cannot help."""
