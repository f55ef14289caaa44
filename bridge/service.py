"""The bridge: the webhook receiver and the workers behind it, on one NATS connection.

:class:`Bridge` is what ``agora up`` runs beside the host when ``agora.yaml`` has a
``bridge:`` section, and what the demo and the tests start in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

from aiohttp import web
from githubkit import GitHub
from nats.aio.client import Client
from nats.js import JetStreamContext

from agora.bridge.catchup import CATCH_UP_EVERY_S, CatchUp, redeliver_failed
from agora.bridge.commit import FactsCommitter, FactsSource
from agora.bridge.config import BridgeConfig
from agora.bridge.deliveries import DEFAULT_PATIENCE, Patience
from agora.bridge.github import Clock, GitHubUnavailable, GitHubWriter, Sleep, make_client
from agora.bridge.inbound import InboundWorker
from agora.bridge.links import Links
from agora.bridge.mirror import Mirror
from agora.bridge.streams import ensure_bridge_streams
from agora.bridge.webhook import WebhookReceiver
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.spine import ensure_spine
from agora.host.tasks import cancel_all

log = logging.getLogger(__name__)

NOT_FOUND: Final = 404


class Bridge:
    def __init__(
        self,
        *,
        config: BridgeConfig,
        channels: set[str],
        key: SigningKey,
        registry: KeyRegistry,
        replicas: int = 1,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        facts: FactsSource | None = None,
        patience: Patience = DEFAULT_PATIENCE,
        catch_up_every_s: float = CATCH_UP_EVERY_S,
    ) -> None:
        self.config = config
        self._catch_up_every_s = catch_up_every_s
        self._channels = channels
        self._key = key
        self._registry = registry
        self._replicas = replicas
        self._clock = clock
        self._sleep = sleep
        self.mirror: Mirror | None = None
        self.committer: FactsCommitter | None = None
        self._facts = facts
        self._patience = patience
        self._github: GitHub[Any] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._catch_up_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.caught_up = asyncio.Event()
        self.writer: GitHubWriter | None = None
        self.receiver: WebhookReceiver | None = None
        self.inbound: InboundWorker | None = None
        self.links: Links | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, nc: Client) -> None:
        js = nc.jetstream()
        await ensure_spine(js, replicas=self._replicas)
        await ensure_bridge_streams(js, replicas=self._replicas)
        speaker = self._registry.get(self._key.name)
        self.links = Links(js, self.config.links, self._channels, granted=speaker.may_use)
        await self.links.prepare()
        self._github = make_client(self.config)
        self.writer = GitHubWriter(
            self._github,
            per_minute=self.config.per_minute,
            per_hour=self.config.per_hour,
            clock=self._clock,
            sleep=self._sleep,
        )
        self.inbound = InboundWorker(
            js=js,
            config=self.config,
            key=self._key,
            registry=self._registry,
            links=self.links,
            current_labels=self._labels_of,
            sender_permission=self._permission_of,
            patience=self._patience,
        )
        await self.inbound.start()
        self.caught_up = asyncio.Event()
        self._catch_up_task = asyncio.create_task(self._catch_up(js), name="bridge-catch-up")
        if self.config.facts.mode != "off":
            self._start_committer()
        if self.config.mirror:
            self.mirror = Mirror(
                js=js,
                writer=self.writer,
                links=self.links,
                registry=self._registry,
                config=self.config,
            )
            await self.mirror.start()
        self.receiver = WebhookReceiver(
            nc=nc,
            secret=self.config.webhook_secret,
            max_body_bytes=self.config.max_body_bytes,
            working=self.inbound.alive,
        )
        self._runner = web.AppRunner(self.receiver.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen_host, self.config.listen_port)
        await site.start()
        host, port = self._bound_address()
        self.url = f"http://{host}:{port}"
        log.info("bridge listening for webhooks at %s/webhook", self.url)

    async def _labels_of(self, repo: str, number: int) -> set[str]:
        assert self.writer is not None  # noqa: S101 - made in start()
        issue = await self.writer.issue(repo, number)
        return {label if isinstance(label, str) else str(label.name) for label in issue.labels}

    async def _permission_of(self, repo: str, login: str) -> str:
        """``login``'s base role on ``repo`` (admin, write, read, none), from GitHub."""
        assert self.writer is not None and self._github is not None  # noqa: S101 - made in start()
        github = self._github
        owner, name = repo.split("/", 1)
        try:
            response = await self.writer.read(
                lambda: github.rest.repos.async_get_collaborator_permission_level(
                    owner, name, login
                )
            )
        except GitHubUnavailable as exc:
            if exc.status == NOT_FOUND:  # no such user
                return "none"
            raise
        return str(response.parsed_data.permission)

    async def _catch_up(self, js: JetStreamContext) -> None:
        """Catch up at start, then look for missed label events and comments again
        every ``catch_up_every_s``, which also moves the watermarks forward."""
        assert self.writer is not None and self.links is not None and self.inbound is not None  # noqa: S101
        missed = CatchUp(js=js, writer=self.writer, links=self.links, worker=self.inbound)
        try:
            await self._catch_up_at_start(js, missed)
        finally:
            self.caught_up.set()
        while not await self._stopped_within(self._catch_up_every_s):
            try:
                await missed.run()
            except Exception:
                log.exception("could not catch up on label events and comments")

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the bridge stops; whether it stops. (A stop also
        cancels the task, but a cancellation that a library swallowed must not leave
        the loop running.)"""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

    async def _catch_up_at_start(self, js: JetStreamContext, missed: CatchUp) -> None:
        """The label events and comments, then the failed deliveries: neither failing
        stops the other."""
        assert self.writer is not None  # noqa: S101 - made in start()
        try:
            looked_at = await missed.run()
            log.info("caught up: %d label events and comments looked at", looked_at)
        except Exception:
            log.exception("could not catch up on label events and comments")
        try:
            asked = await redeliver_failed(js=js, config=self.config, writer=self.writer)
            log.info("caught up: %d deliveries asked again", asked)
        except Exception:
            log.exception("could not ask GitHub to redeliver the failed deliveries")

    def _start_committer(self) -> None:
        if self._facts is None:
            log.warning(
                "facts.commit is %s, but no facts are recorded in this process: the process "
                "that records the facts (agora up without --no-record) commits them",
                self.config.facts.mode,
            )
            return
        client = make_client(self.config) if self.config.facts.mode == "api" else None
        self.committer = FactsCommitter(
            settings=self.config.facts, source=self._facts, client=client, writer=self.writer
        )
        self._commit_task = asyncio.create_task(self.committer.run(), name="bridge-commit")

    def _bound_address(self) -> tuple[str, int]:
        assert self._runner is not None  # noqa: S101 - called after setup
        for site in self._runner.sites:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            for sock in sockets:
                name = sock.getsockname()
                return str(name[0]), int(name[1])
        return self.config.listen_host, self.config.listen_port

    async def stop(self) -> None:
        """Stop every part, each whatever another raised (which is raised after)."""
        self._stopping.set()
        async with contextlib.AsyncExitStack() as then:  # its steps run last to first
            if self.inbound is not None:
                then.push_async_callback(self.inbound.stop)
            if self.mirror is not None:
                then.push_async_callback(self.mirror.stop)
            if self._runner is not None:
                then.push_async_callback(self._runner.cleanup)
            await cancel_all([self._catch_up_task, self._commit_task])
