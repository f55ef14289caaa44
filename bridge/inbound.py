"""The inbound worker: stored deliveries become signed acts, refusals, kills and links.

It reads ``AGORA_WEBHOOKS`` in order through a durable consumer, parses each delivery
with githubkit's webhook models, and acts:

- ``issue_comment.created`` on a linked issue: a person allowed to speak becomes a
  speech act on the linked channel, signed by the bridge, with its provenance (login,
  comment id and URL, delivery id, issue) and a fresh hop budget. Anything else said
  there (the bridge's own comment coming back, a bot, someone not allowed, a pull
  request unless configured, a malformed command) is a signed ``refused`` fact;
- ``issue_comment.edited`` / ``deleted``: an ``edited`` / ``deleted`` fact, pointing at
  the act the comment became, if it became one;
- ``issues.labeled`` with the kill label: the linked channel is killed through the
  out-of-band control path; ``unlabeled`` resumes it; ``agora:channel:<name>`` links the
  issue to a channel (``unlabeled`` unlinks it).

Every id is derived from GitHub's (the comment id, the delivery id), so handling a
delivery twice publishes the same facts under the same ids: the spine and the recorder
drop the repeats. A delivery is marked handled only after its effects are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from githubkit.webhooks import parse_obj
from githubkit_schemas.latest.models import (
    WebhookIssueCommentCreated,
    WebhookIssueCommentDeleted,
    WebhookIssueCommentEdited,
    WebhookIssuesLabeled,
    WebhookIssuesUnlabeled,
)
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError, KeyNotFoundError
from pydantic import ValidationError

from agora.bridge.config import BridgeConfig
from agora.bridge.links import Links
from agora.bridge.once import OnceOut
from agora.bridge.speech import Author, Refusal, Speech, screen_comment
from agora.bridge.streams import BRIDGE_BUCKET, DELIVERIES_BUCKET, WEBHOOK_STREAM, Buckets
from agora.bridge.webhook import DELIVERY_HEADER, EVENT_HEADER
from agora.core.acts import check_channel
from agora.core.control import record_and_switch
from agora.core.envelope import Act, Event, EventKind
from agora.core.errors import InputError
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import sign_fact, verify_envelope
from agora.core.spine import channel_subject, event_subject

log = logging.getLogger(__name__)

INBOUND_CONSUMER: Final = "bridge-inbound"
FETCH_BATCH: Final = 32
FETCH_WAIT_S: Final = 0.25
MAX_DELIVER: Final = 5
RETRY_S: Final = 1.0
TEXT_CHARS: Final = 1000


def act_id_for_comment(comment_id: int) -> str:
    return f"act-gh-comment-{comment_id}"


def present(value: object) -> bool:
    """Whether an optional githubkit field holds a value (not None, not UNSET)."""
    return value is not None and type(value).__name__ != "Unset" and bool(value)


def author_of(comment: Any) -> Author:
    """Who wrote a comment, from a webhook's or the REST API's comment model."""
    user = comment.user
    return Author(
        login=user.login if user is not None else "ghost",
        kind=str(user.type) if user is not None else "User",
        association=str(comment.author_association),
        via_app=present(comment.performed_via_github_app),
    )


@dataclass(frozen=True, slots=True)
class SeenComment:
    """A comment on an issue, as a webhook or the REST API reports it."""

    repo: str
    number: int
    comment_id: int
    body: str
    url: str
    author: Author
    on_pull_request: bool


@dataclass(slots=True)
class InboundCounters:
    handled: int = 0
    injected: int = 0
    refused: int = 0
    killed: int = 0
    resumed: int = 0
    ignored: int = 0
    malformed: int = 0


class InboundWorker:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        config: BridgeConfig,
        key: SigningKey,
        registry: KeyRegistry,
        links: Links,
        current_labels: Callable[[str, int], Awaitable[set[str]]] | None = None,
    ) -> None:
        self._js = js
        self._buckets = Buckets(js)
        self._out = OnceOut(js, self._buckets)
        self._config = config
        self._key = key
        self._registry = registry
        self._links = links
        self._current_labels = current_labels
        self.counters = InboundCounters()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()
        self.healthy = True
        self._repos = {repo.lower() for repo in config.repos}
        self._consumer = ConsumerConfig(durable_name=INBOUND_CONSUMER)

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=INBOUND_CONSUMER,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=MAX_DELIVER,
            max_ack_pending=FETCH_BATCH * 2,
        )
        self._consumer = config
        subscription = await self._bind()
        self._task = asyncio.create_task(self._run(subscription), name="bridge-inbound")

    async def _bind(self) -> JetStreamContext.PullSubscription:
        await self._js.add_consumer(WEBHOOK_STREAM, self._consumer)
        return await self._js.pull_subscribe_bind(INBOUND_CONSUMER, stream=WEBHOOK_STREAM)

    def alive(self) -> bool:
        """Whether the worker is running and its last fetch worked (for ``/readyz``)."""
        return self._task is not None and not self._task.done() and self.healthy

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=10)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _run(self, subscription: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except (FetchTimeoutError, TimeoutError):
                continue
            except Exception:
                log.exception("could not fetch deliveries; binding the consumer again")
                self.healthy = False
                await asyncio.sleep(RETRY_S)
                with contextlib.suppress(Exception):
                    subscription = await self._bind()
                continue
            self.healthy = True
            for message in messages:
                try:
                    await self.handle(message)
                    await message.ack()
                except Exception:
                    log.exception("delivery not handled; it will be tried again")

    # -- one delivery -------------------------------------------------------------------

    async def handle(self, message: Msg) -> None:
        headers = message.headers or {}
        event = headers.get(EVENT_HEADER, "")
        delivery = headers.get(DELIVERY_HEADER, "")
        deliveries = await self._buckets.get(DELIVERIES_BUCKET)
        with contextlib.suppress(KeyNotFoundError):
            await deliveries.get(delivery)
            return  # handled before (a redelivery, or a replay after a restart)
        try:
            payload: Any = parse_obj(event, _json(message.data))
        except (ValidationError, ValueError, InputError) as exc:
            self.counters.malformed += 1
            log.warning("delivery %s (%s) does not parse: %s", delivery, event, exc)
        else:
            await self._dispatch(payload, delivery)
        await deliveries.put(delivery, b"handled")
        self.counters.handled += 1

    async def _dispatch(self, payload: object, delivery: str) -> None:
        repository = getattr(payload, "repository", None)
        name = str(getattr(repository, "full_name", "")).lower()
        if name not in self._repos:
            await self._record(
                EventKind.REFUSED,
                delivery,
                reason="unknown-repository",
                detail="the delivery is about a repository the bridge is not configured for",
                data={"repository": name[:200], "delivery": delivery},
            )
            self.counters.refused += 1
            return
        if isinstance(payload, WebhookIssueCommentCreated):
            await self._comment_created(payload, delivery)
        elif isinstance(payload, WebhookIssueCommentEdited | WebhookIssueCommentDeleted):
            await self._comment_changed(payload, delivery)
        elif isinstance(payload, WebhookIssuesLabeled | WebhookIssuesUnlabeled):
            await self._label(payload, delivery)
        else:
            self.counters.ignored += 1

    async def _comment_created(self, payload: WebhookIssueCommentCreated, delivery: str) -> None:
        comment = payload.comment
        await self.comment_seen(
            SeenComment(
                repo=payload.repository.full_name,
                number=payload.issue.number,
                comment_id=comment.id,
                body=comment.body,
                url=comment.html_url,
                author=author_of(comment),
                on_pull_request=present(getattr(payload.issue, "pull_request", None)),
            ),
            delivery=delivery,
        )

    async def comment_seen(self, seen: SeenComment, *, delivery: str) -> None:
        """Inject a new comment on a linked issue, or record why not; once per comment.

        Called for a webhook, and by the catch-up for comments made while the bridge was
        down. The ids come from the comment, so the two paths can never both count.
        """
        async with self._one_at_a_time:  # the webhook and the catch-up may meet here
            await self._comment_seen(seen, delivery)

    async def _comment_seen(self, seen: SeenComment, delivery: str) -> None:
        channel = await self._links.channel_for(seen.repo, seen.number)
        if channel is None:
            self.counters.ignored += 1
            return
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        with contextlib.suppress(KeyNotFoundError):
            await bucket.get(f"seen.{seen.comment_id}")
            return
        provenance = {
            "source": "github-comment",
            "login": seen.author.login,
            "comment_id": str(seen.comment_id),
            "url": seen.url,
            "delivery": delivery,
            "issue": f"{seen.repo}#{seen.number}",
        }
        verdict = screen_comment(
            body=seen.body,
            author=seen.author,
            bridge_login=self._config.login,
            on_pull_request=seen.on_pull_request,
            pull_requests_allowed=self._config.pull_requests,
            associations=self._config.associations,
            allowed_logins=self._config.logins,
        )
        if isinstance(verdict, Speech) and not self._registry.get(self._key.name).may_use(channel):
            verdict = (
                Refusal.BRIDGE_NOT_GRANTED,
                f"the bridge identity {self._key.name!r} is not granted {channel!r}",
            )
        if isinstance(verdict, Speech):
            await self._inject(verdict, channel, seen.comment_id, provenance)
        else:
            refusal, why = verdict
            await self._record(
                EventKind.REFUSED,
                f"comment-{seen.comment_id}",
                reason=refusal.value,
                detail=why,
                channel=channel,
                data=provenance,
            )
            self.counters.refused += 1
        await bucket.put(f"seen.{seen.comment_id}", b"1")

    async def _inject(
        self, speech: Speech, channel: str, comment_id: int, provenance: dict[str, str]
    ) -> None:
        ident = act_id_for_comment(comment_id)

        def sign(at_ms: int) -> bytes:
            act = Act(
                id=ident,
                conversation=ident,
                sender=self._key.name,
                channel=channel,
                act=speech.act,
                payload=speech.text,
                hops=self._config.hops,
                time_ms=at_ms,
                provenance=provenance,
            )
            return sign_fact(act, self._key)

        await self._out.publish(subject=channel_subject(channel), ident=ident, sign=sign, act=True)
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        await bucket.put(f"comment.{comment_id}", ident.encode())
        self.counters.injected += 1

    async def _comment_changed(
        self, payload: WebhookIssueCommentEdited | WebhookIssueCommentDeleted, delivery: str
    ) -> None:
        repo = payload.repository.full_name
        channel = await self._links.channel_for(repo, payload.issue.number)
        if channel is None:
            self.counters.ignored += 1
            return
        comment = payload.comment
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        subjects: tuple[str, ...] = ()
        with contextlib.suppress(KeyNotFoundError):
            entry = await bucket.get(f"comment.{comment.id}")
            act_id = (entry.value or b"").decode()
            subjects = (act_id,) if act_id else ()
        edited = isinstance(payload, WebhookIssueCommentEdited)
        await self._record(
            EventKind.EDITED if edited else EventKind.DELETED,
            delivery,
            reason="comment-edited" if edited else "comment-deleted",
            detail=(comment.body or "")[:TEXT_CHARS] if edited else "",
            channel=channel,
            subjects=subjects,
            data={
                "login": payload.sender.login,
                "comment_id": str(comment.id),
                "url": comment.html_url,
                "delivery": delivery,
            },
        )

    async def _label(
        self, payload: WebhookIssuesLabeled | WebhookIssuesUnlabeled, delivery: str
    ) -> None:
        label = payload.label.name if present(payload.label) and payload.label else ""
        repo = payload.repository.full_name
        number = payload.issue.number
        added = isinstance(payload, WebhookIssuesLabeled)
        who = payload.sender.login
        prefix = self._config.link_label_prefix
        if label.startswith(prefix):
            await self._link_label(label.removeprefix(prefix), repo, number, added, delivery)
            return
        if label != self._config.kill_label:
            self.counters.ignored += 1
            return
        channel = await self._links.channel_for(repo, number)
        if channel is None:
            self.counters.ignored += 1
            return
        # Deliveries can arrive out of order (redeliveries, retries, replays): the switch
        # follows whether the label is on the issue now, not what this event says.
        added = await self._label_is_on(repo, number, label, default=added)
        kind = EventKind.KILLED if added else EventKind.RESUMED
        # one id per delivery and decision: handled again, the same decision is the
        # very same fact (kept), a different one (the label moved since) a fact of its own
        ident = f"ev-gh-{delivery}-{kind.value}"

        def signed_at(at_ms: int) -> Event:
            return Event(
                id=ident,
                kind=kind,
                actor=self._key.name,
                time_ms=at_ms,
                reason="label",
                detail=f"{who} {'added' if added else 'removed'} {label!r} on {repo}#{number}",
                channel=channel,
                data={"login": who, "issue": f"{repo}#{number}", "delivery": delivery},
            )

        def kept(envelope: bytes) -> Event | None:
            """The switch event ``envelope`` carries, if it is the bridge's for this
            delivery and decision (anything else kept under its id is not used)."""
            try:
                fact = verify_envelope(envelope, self._registry).fact
            except InputError:
                return None
            if not isinstance(fact, Event) or replace(fact, time_ms=0) != signed_at(0):
                return None
            return fact

        envelope = await self._out.envelope(
            subject=event_subject(self._key.name),
            ident=ident,
            sign=lambda at_ms: sign_fact(signed_at(at_ms), self._key),
            act=False,
            meant=lambda envelope: kept(envelope) is not None,
        )
        event = kept(envelope or b"")
        if envelope is None or event is None:  # pragma: no cover - signed just above
            raise InputError(f"the bridge could not make its {kind.value} event {ident!r}")
        await record_and_switch(self._js, event, envelope)
        if added:
            self.counters.killed += 1
        else:
            self.counters.resumed += 1

    async def _label_is_on(self, repo: str, number: int, label: str, *, default: bool) -> bool:
        if self._current_labels is None:
            return default
        try:
            return label in await self._current_labels(repo, number)
        except Exception:
            log.warning("could not read the labels of %s#%d; trusting the event", repo, number)
            return default

    async def _link_label(
        self, name: str, repo: str, number: int, added: bool, delivery: str
    ) -> None:
        try:
            channel = check_channel(name)
            if added:
                await self._links.link(repo, number, channel)
        except InputError as exc:  # a malformed or undeclared channel
            await self._record(
                EventKind.REFUSED,
                delivery,
                reason="bad-link",
                detail=str(exc),
                data={"issue": f"{repo}#{number}"},
            )
            return
        if added:
            await self._links.start_watermark(repo, number)
        else:
            await self._links.unlink(repo, number, channel)
        await self._record(
            EventKind.NOTE,
            delivery,
            reason="linked" if added else "unlinked",
            detail=f"{repo}#{number} {'linked to' if added else 'unlinked from'} {channel}",
            channel=channel,
            data={"issue": f"{repo}#{number}"},
        )

    async def _record(
        self,
        kind: EventKind,
        cause: str,
        *,
        reason: str,
        detail: str,
        channel: str | None = None,
        subjects: tuple[str, ...] = (),
        data: Mapping[str, str] | None = None,
    ) -> None:
        ident = f"ev-gh-{cause}"

        def sign(at_ms: int) -> bytes:
            event = Event(
                id=ident,
                kind=kind,
                actor=self._key.name,
                time_ms=at_ms,
                reason=reason,
                detail=detail[:TEXT_CHARS],
                subjects=subjects,
                channel=channel,
                data={k: v[:TEXT_CHARS] for k, v in (data or {}).items()},
            )
            return sign_fact(event, self._key)

        await self._out.publish(
            subject=event_subject(self._key.name), ident=ident, sign=sign, act=False
        )


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the stored delivery is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InputError("the stored delivery is not a JSON object")
    return value
