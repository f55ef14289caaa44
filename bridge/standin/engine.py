"""What the HTTP routes and the in-process API share: the world and its bookkeeping.

The engine owns the world, the clock, the rate limits, the fault queue, the request log
and the webhook sender, and turns every ``Happening`` into one queued delivery per hook
that wants it (an app's hook only hears about repositories the app is installed on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from agora.bridge.standin import payloads
from agora.bridge.standin.faults import FaultQueue
from agora.bridge.standin.hooks import HookSender, Job
from agora.bridge.standin.limits import (
    ANONYMOUS_LIMIT_PER_HOUR,
    INSTALLATION_LIMIT_PER_HOUR,
    USER_LIMIT_PER_HOUR,
    RateLimits,
)
from agora.bridge.standin.state import App, Delivery, Happening, Hook, World

PLACEHOLDER_URL: Final = "http://127.0.0.1"
DEFAULT_HOOK_EVENTS: Final = ("*",)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the stand-in answered it."""

    time: float
    method: str
    path: str
    status: int
    caller: str  # the rate-limit bucket: "user:ID", "installation:ID", "app:ID", "anonymous"
    creation: bool  # a content-creating request that was let through


class Engine:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        user_limit: int = USER_LIMIT_PER_HOUR,
        installation_limit: int = INSTALLATION_LIMIT_PER_HOUR,
        creations_per_minute: int | None = None,
        creations_per_hour: int | None = None,
        hook_timeout_s: float = 10.0,
    ) -> None:
        self.world = World()
        self.clock = clock
        self.urls = payloads.Urls(PLACEHOLDER_URL, PLACEHOLDER_URL)
        self.limits = RateLimits()
        if creations_per_minute is not None:
            self.limits.per_minute = creations_per_minute
        if creations_per_hour is not None:
            self.limits.per_hour = creations_per_hour
        self.user_limit = user_limit
        self.installation_limit = installation_limit
        self.faults = FaultQueue()
        self.log: list[RequestRecord] = []
        self.sender = HookSender(self.world, clock=clock, timeout_s=hook_timeout_s)

    def limit_for(self, caller: str) -> int:
        if caller.startswith("installation:"):
            return self.installation_limit
        if caller == "anonymous":
            return ANONYMOUS_LIMIT_PER_HOUR
        return self.user_limit

    def publish(self, happenings: Iterable[Happening]) -> None:
        for happening in happenings:
            for hook in list(self.world.hooks.values()):
                if not hook.wants(happening.event):
                    continue
                installation = None
                if hook.app is not None:
                    installation = self.world.installation_for(hook.app, happening.repo)
                    if installation is None:
                        continue
                payload = payloads.webhook_payload(self.world, happening, hook, self.urls)
                self.sender.enqueue(
                    Job.new(
                        hook,
                        happening.event,
                        payload,
                        installation_id=installation.id if installation else None,
                        repository_id=happening.repo.id,
                    )
                )

    def add_hook(
        self,
        url: str,
        secret: str,
        *,
        events: tuple[str, ...] = DEFAULT_HOOK_EVENTS,
        app: App | None = None,
    ) -> Hook:
        hook = self.world.add_hook(url, secret, events=events, app=app, now=self.clock())
        self.sender.enqueue(Job.new(hook, "ping", payloads.ping_payload(hook, self.urls)))
        return hook

    def redeliver(self, delivery: Delivery) -> None:
        self.sender.enqueue(Job.again(delivery))
