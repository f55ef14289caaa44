"""Webhook deliveries: signed HTTP POSTs sent in order by one background task.

Each delivery carries GitHub's headers (``X-GitHub-Event``, ``X-GitHub-Delivery``,
``X-GitHub-Hook-ID``, the installation target, ``X-Hub-Signature`` and
``X-Hub-Signature-256`` over the exact body, ``User-Agent: GitHub-Hookshot/...``) and is
recorded with its status code and duration, also when the target is down or slow (status
code 0), so it can be listed and redelivered later through the deliveries API. GitHub
never retries a failed delivery by itself, and neither does this. A test can make the
next deliveries that match fail so (:class:`Unreachable`) while the target still runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from agora.bridge.standin.state import Delivery, Hook, World

USER_AGENT: Final = "GitHub-Hookshot/9a4e1b7"
DELIVERY_TIMEOUT_S: Final = 10.0
RESPONSE_BODY_CHARS: Final = 2048


def signature_256(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_1(secret: str, body: bytes) -> str:
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def request_headers(
    hook: Hook, *, guid: str, event: str, body: bytes, repository_id: int | None = None
) -> dict[str, str]:
    """GitHub's delivery headers; the target is the app, or the repository the hook is on."""
    target = hook.app.id if hook.app is not None else repository_id or hook.id
    headers = {
        "Accept": "*/*",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-GitHub-Delivery": guid,
        "X-GitHub-Event": event,
        "X-GitHub-Hook-ID": str(hook.id),
        "X-GitHub-Hook-Installation-Target-ID": str(target),
        "X-GitHub-Hook-Installation-Target-Type": (
            "integration" if hook.app is not None else "repository"
        ),
    }
    if hook.secret:
        headers["X-Hub-Signature"] = signature_1(hook.secret, body)
        headers["X-Hub-Signature-256"] = signature_256(hook.secret, body)
    return headers


@dataclass(frozen=True, slots=True)
class Job:
    hook: Hook
    guid: str
    event: str
    action: str | None
    body: bytes
    installation_id: int | None
    repository_id: int | None
    redelivery: bool = False

    @classmethod
    def new(
        cls,
        hook: Hook,
        event: str,
        payload: dict[str, Any],
        *,
        installation_id: int | None = None,
        repository_id: int | None = None,
    ) -> Job:
        action = payload.get("action")
        return cls(
            hook,
            str(uuid.uuid4()),
            event,
            action if isinstance(action, str) else None,
            encode(payload),
            installation_id,
            repository_id,
        )

    @classmethod
    def again(cls, delivery: Delivery) -> Job:
        """The same payload under the same GUID, marked as a redelivery."""
        return cls(
            delivery.hook,
            delivery.guid,
            delivery.event,
            delivery.action,
            delivery.body,
            delivery.installation_id,
            delivery.repository_id,
            redelivery=True,
        )


@dataclass(slots=True)
class Unreachable:
    """The next ``times`` deliveries of ``event`` with ``action`` (None: any) fail as if
    their target could not be reached: recorded with status code 0, never sent."""

    event: str | None = None
    action: str | None = None
    times: int = 1

    def matches(self, job: Job) -> bool:
        return self.event in (None, job.event) and self.action in (None, job.action)


class HookSender:
    """Delivers queued jobs one at a time, in order, and records every attempt."""

    def __init__(
        self,
        world: World,
        *,
        clock: Callable[[], float],
        timeout_s: float = DELIVERY_TIMEOUT_S,
    ) -> None:
        self._world = world
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Unbounded on purpose: GitHub never holds up a write because a hook is slow.
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._unreachable: list[Unreachable] = []

    def enqueue(self, job: Job) -> None:
        self._queue.put_nowait(job)

    def fail(self, unreachable: Unreachable) -> None:
        if unreachable.times < 1:
            raise ValueError(f"times must be at least 1, got {unreachable.times}")
        self._unreachable.append(unreachable)

    def _unreachable_for(self, job: Job) -> bool:
        """Whether ``job`` is to fail unsent (one use of the first rule it matches)."""
        for index, rule in enumerate(self._unreachable):
            if rule.matches(job):
                rule.times -= 1
                if rule.times == 0:
                    del self._unreachable[index]
                return True
        return False

    async def drain(self) -> None:
        """Return once every job queued so far has been attempted."""
        await self._queue.join()

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                job = await self._queue.get()
                try:
                    await self._deliver(session, job)
                finally:
                    self._queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, job: Job) -> Delivery:
        headers = request_headers(
            job.hook, guid=job.guid, event=job.event, body=job.body, repository_id=job.repository_id
        )
        delivery = Delivery(
            id=self._world.next_id("delivery"),
            guid=job.guid,
            hook=job.hook,
            event=job.event,
            action=job.action,
            installation_id=job.installation_id,
            repository_id=job.repository_id,
            redelivery=job.redelivery,
            body=job.body,
            request_headers=headers,
            delivered_at=self._clock(),
        )
        started = time.monotonic()
        if self._unreachable_for(job):
            delivery.status = "failed to connect to host"
        else:
            await self._post(session, job, delivery)
        delivery.duration = time.monotonic() - started
        self._world.deliveries.append(delivery)
        return delivery

    async def _post(self, session: aiohttp.ClientSession, job: Job, delivery: Delivery) -> None:
        """Send one delivery and record how its target answered, or why it did not."""
        try:
            async with session.post(
                job.hook.url, data=job.body, headers=delivery.request_headers
            ) as response:
                text = await response.text(errors="replace")
                delivery.status_code = response.status
                delivery.response_headers = dict(response.headers)
                delivery.response_body = text[:RESPONSE_BODY_CHARS]
                delivery.status = (
                    "OK" if delivery.ok else f"Invalid HTTP Response: {response.status}"
                )
        except TimeoutError:
            delivery.status = "timed out"
        except (aiohttp.ClientError, OSError, ValueError):
            delivery.status = "failed to connect to host"
