"""The inbound worker: stored deliveries become signed acts, refusals, kills and links.

It reads ``AGORA_WEBHOOKS`` in order through a durable consumer, parses each delivery
with githubkit's webhook models, and acts:

- ``issue_comment.created`` on a linked issue: a person allowed to speak becomes a
  speech act on the linked channel, signed by the bridge, with its provenance (login,
  comment id and URL, delivery id, issue) and a fresh hop budget. Anything else said
  there (the bridge's own comment coming back, a bot, someone not allowed, a pull
  request unless configured, a malformed command, text that is not valid Unicode) is a
  signed ``refused`` fact;
- ``issue_comment.edited`` / ``deleted`` of a comment that became an act: an ``edited``
  / ``deleted`` fact pointing at that act, if its author may still speak (else a
  ``refused`` fact). Other comments' edits, the bridge's own status refreshes among
  them, are not recorded; a comment deleted before it became an act is marked seen, so
  its creation arriving after the deletion (redeliveries come in any order) is never
  injected;
- ``issues.labeled`` / ``unlabeled`` with the kill label or a link label
  (:mod:`agora.bridge.labels`): the channel killed or resumed, the issue linked or
  unlinked, if the label's sender may (else a ``refused`` fact). The catch-up hands
  it the label events it lists (those whose delivery failed among them), each judged
  the same way, and once, whichever way it came.

Every id is derived from GitHub's (the comment id, the delivery id), so handling a
delivery twice publishes the same facts under the same ids: the spine and the recorder
drop the repeats. A delivery is marked handled only after its effects are published.

No delivery is dropped. One that is bad input, the same however often it is read (a
delivery id too long to make fact ids from, a payload GitHub's schema refuses, text
that is not valid Unicode), is refused at once as a ``refused`` fact and marked
handled. One whose handling fails (NATS or GitHub out of reach) is tried again later,
further apart each time (:class:`Patience`: about an hour in all); then it is given up
with a ``fault`` fact naming why, stays in ``AGORA_WEBHOOKS`` (the fact names its
sequence) and is not marked handled, so a redelivery from GitHub is tried afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
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
from agora.bridge.deliveries import (
    DEFAULT_PATIENCE,
    TEXT_CHARS,
    BadDelivery,
    Patience,
    about,
    delivery_of,
    digest,
    parse_problem,
    printable,
    stored_json,
    why,
)
from agora.bridge.labels import (
    CurrentLabels,
    LabelChange,
    LabelHandler,
    Sender,
    SenderPermission,
)
from agora.bridge.links import Links
from agora.bridge.once import OnceOut
from agora.bridge.speech import (
    Author,
    Refusal,
    Speech,
    check_text,
    screen_author,
    screen_comment,
)
from agora.bridge.streams import BRIDGE_BUCKET, DELIVERIES_BUCKET, WEBHOOK_STREAM, Buckets
from agora.bridge.webhook import DELIVERY_HEADER, EVENT_HEADER, delivery_problem, handled_keys
from agora.core.envelope import Act, Event, EventKind
from agora.core.errors import InputError, shown
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import sign_fact
from agora.core.spine import channel_subject, event_subject
from agora.host.tasks import finish

log = logging.getLogger(__name__)

INBOUND_CONSUMER: Final = "bridge-inbound"
FETCH_BATCH: Final = 32
FETCH_WAIT_S: Final = 0.25
ACK_WAIT_S: Final = 30.0
UNLIMITED: Final = -1  # the worker, not the server, decides when a delivery is given up
RETRY_S: Final = 1.0
SEEN: Final = b"1"
SEEN_DELETED: Final = b"deleted"


def act_id_for_comment(comment_id: int) -> str:
    return f"act-gh-comment-{comment_id}"


def seen_key(comment_id: int) -> str:
    """Where a comment handled (or deleted before it was) is remembered, for good: an old
    comment edited later is listed again by the catch-up."""
    return f"seen.{comment_id}"


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
    created_at: datetime


@dataclass(slots=True)
class InboundCounters:
    handled: int = 0
    injected: int = 0
    refused: int = 0
    killed: int = 0
    resumed: int = 0
    ignored: int = 0
    malformed: int = 0
    retried: int = 0  # handlings that failed and were put off
    failed: int = 0  # deliveries given up after every attempt


class InboundWorker:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        config: BridgeConfig,
        key: SigningKey,
        registry: KeyRegistry,
        links: Links,
        current_labels: CurrentLabels | None = None,
        sender_permission: SenderPermission | None = None,
        patience: Patience = DEFAULT_PATIENCE,
    ) -> None:
        self._js = js
        self._buckets = Buckets(js)
        self._out = OnceOut(js, self._buckets)
        self._config = config
        self._key = key
        self._registry = registry
        self._links = links
        self._patience = patience
        self.counters = InboundCounters()
        self._labels = LabelHandler(
            config=config,
            key=key,
            registry=registry,
            links=links,
            js=js,
            out=self._out,
            record=self._record,
            counters=self.counters,
            buckets=self._buckets,
            current_labels=current_labels,
            sender_permission=sender_permission,
            github_read_s=patience.github_read_s,
        )
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
            ack_wait=ACK_WAIT_S,
            max_deliver=UNLIMITED,
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
        await finish(self._task, self._stopping, graceful=True)

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
                await self._take(message)

    # -- one delivery, to its end -------------------------------------------------------

    async def _take(self, message: Msg) -> None:
        """Handle one delivery, then acknowledge it, put it off, or end it as a fact."""
        try:
            await self.handle(message)
        except InputError as exc:  # the same every time: refused at once
            await self._end(message, self._refuse_delivery(message, exc))
        except Exception as exc:
            attempt = message.metadata.num_delivered
            if attempt < self._patience.attempts:
                await self._put_off(message, attempt, exc)
            else:
                await self._end(message, self._give_up(message, attempt, exc))
        else:
            await _settle(message.ack(), "acknowledge", message)

    async def _put_off(self, message: Msg, attempt: int, exc: Exception) -> None:
        delay = self._patience.retry_after_s(attempt)
        self.counters.retried += 1
        log.warning(
            "delivery %s not handled (attempt %d of %d): %s; tried again in %.0f s",
            delivery_of(message),
            attempt,
            self._patience.attempts,
            why(exc),
            delay,
        )
        await _settle(message.nak(delay=delay), "put off", message)

    async def _end(self, message: Msg, record: Awaitable[None]) -> None:
        """Record why a delivery ends unhandled, then stop its redelivery. If even that
        record cannot be made, the delivery comes back later: it is never dropped."""
        try:
            await record
        except Exception as exc:
            log.warning(
                "could not record why delivery %s ends (%s); it comes back later",
                delivery_of(message),
                why(exc),
            )
            delay = self._patience.longest_retry_s
            await _settle(message.nak(delay=delay), "put off", message)
            return
        await _settle(message.term(), "end", message)

    async def _refuse_delivery(self, message: Msg, exc: InputError) -> None:
        delivery = delivery_of(message)
        await self._record(
            EventKind.REFUSED,
            f"refused_{digest(message)}",
            reason="bad-delivery",
            detail=f"the delivery cannot be handled: {printable(str(exc))}",
            data=about(message),
        )
        self.counters.refused += 1
        deliveries = await self._buckets.get(DELIVERIES_BUCKET)
        event = (message.headers or {}).get(EVENT_HEADER, "")
        json_payload: object = None  # a body that is no JSON object is no label event
        with contextlib.suppress(BadDelivery):
            json_payload = stored_json(message.data)
        for key in handled_keys(event, delivery, message.data, json_payload):
            if key != delivery or delivery_problem(delivery) is None:  # a key it can hold
                await deliveries.put(key, b"refused")

    async def _give_up(self, message: Msg, attempts: int, exc: Exception) -> None:
        minutes = self._patience.retrying_s() / 60
        await self._record(
            EventKind.FAULT,
            f"failed_{digest(message)}",
            reason="delivery-failed",
            detail=(
                f"given up after {attempts} attempts over about {minutes:.0f} min: "
                f"{why(exc)}. The delivery stays in {WEBHOOK_STREAM} (sequence "
                f"{message.metadata.sequence.stream}); a redelivery from GitHub is tried "
                "afresh"
            ),
            data=about(message),
        )
        self.counters.failed += 1
        log.error("delivery %s given up after %d attempts", delivery_of(message), attempts)

    async def handle(self, message: Msg) -> None:
        headers = message.headers or {}
        event = headers.get(EVENT_HEADER, "")
        delivery = headers.get(DELIVERY_HEADER, "")
        problem = delivery_problem(delivery)
        if problem is not None:
            raise BadDelivery(f"{problem}; the stored one is {shown(delivery)}")
        deliveries = await self._buckets.get(DELIVERIES_BUCKET)
        json_payload = stored_json(message.data)
        handled = handled_keys(event, delivery, message.data, json_payload)  # replays too
        for key in handled:
            with contextlib.suppress(KeyNotFoundError):
                await deliveries.get(key)
                return  # handled before (a redelivery, or a replay)
        try:
            payload: Any = parse_obj(event, json_payload)
        except (ValidationError, ValueError) as exc:
            self.counters.malformed += 1
            raise BadDelivery(parse_problem(event, exc)) from exc
        await self._dispatch(payload, delivery)
        for key in handled:
            await deliveries.put(key, b"handled")
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
                data={"repository": printable(name[:200]), "delivery": delivery},
            )
            self.counters.refused += 1
            return
        if isinstance(payload, WebhookIssueCommentCreated):
            await self._comment_created(payload, delivery)
        elif isinstance(payload, WebhookIssueCommentEdited | WebhookIssueCommentDeleted):
            await self._comment_changed(payload, delivery)
        elif isinstance(payload, WebhookIssuesLabeled | WebhookIssuesUnlabeled):
            async with self._one_at_a_time:  # the catch-up may be judging the same event
                await self._labels.handle(payload, delivery)
        else:
            self.counters.ignored += 1

    # -- labels the catch-up found -----------------------------------------------------

    def acts_on_label(self, label: str) -> bool:
        """Whether ``label`` is one the worker acts on: the kill label or a link label."""
        return self._labels.acts_on(label)

    async def label_listed(self, change: LabelChange, *, occurrence: int) -> None:
        """Judge a label event the catch-up listed (the ``occurrence``-th alike it
        listed) as its webhook would be, unless it was judged already, whichever way it
        came (:meth:`~agora.bridge.labels.LabelHandler.listed`)."""
        async with self._one_at_a_time:  # a webhook may bring the same event meanwhile
            await self._labels.listed(change, occurrence=occurrence)

    # -- comments -----------------------------------------------------------------------

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
                created_at=comment.created_at,
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
        link = await self._links.link_of(seen.repo, seen.number)
        if link is None or (link.linked_at is not None and seen.created_at < link.linked_at):
            # not on a linked issue, or made before it was linked (a late delivery: a
            # redelivery, or one of the day before the label): history is no act
            self.counters.ignored += 1
            return
        channel = link.channel
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        with contextlib.suppress(KeyNotFoundError):
            await bucket.get(seen_key(seen.comment_id))
            return  # handled before, or deleted before its creation arrived
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
                f"comment_{seen.comment_id}",
                reason=refusal.value,
                detail=why,
                channel=channel,
                data=provenance,
            )
            self.counters.refused += 1
        await bucket.put(seen_key(seen.comment_id), SEEN)

    async def _inject(
        self, speech: Speech, channel: str, comment_id: int, provenance: dict[str, str]
    ) -> None:
        first = act_id_for_comment(comment_id)

        def sign(ident: str, at_ms: int) -> bytes:
            act = Act(
                id=ident,
                conversation=first,
                sender=self._key.name,
                channel=channel,
                act=speech.act,
                payload=speech.text,
                hops=self._config.hops,
                time_ms=at_ms,
                provenance=provenance,
            )
            return sign_fact(act, self._key)

        subject = channel_subject(channel)
        ident = await self._out.publish(subject=subject, ident=first, sign=sign, act=True)
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        await bucket.put(f"comment.{comment_id}", ident.encode())  # edits point at it
        self.counters.injected += 1

    async def _comment_changed(
        self, payload: WebhookIssueCommentEdited | WebhookIssueCommentDeleted, delivery: str
    ) -> None:
        comment = payload.comment
        body = comment.body or ""
        # Its own comment (its status comment refreshed, say) by who changed it, never by
        # the marker in the new body, which anyone can write into an edit of their act
        # to keep the edit, and then the deletion, off the record. A comment of its own
        # never became an act anyway, and only what did is recorded.
        if self._config.login is not None and payload.sender.login == self._config.login:
            self.counters.ignored += 1
            return
        channel = await self._links.channel_for(payload.repository.full_name, payload.issue.number)
        edited = isinstance(payload, WebhookIssueCommentEdited)
        act_id = await (self._act_of(comment.id) if edited else self._act_or_gone(comment.id))
        if channel is None or act_id is None:  # only what became an act is on the record
            self.counters.ignored += 1
            return
        data = {
            "login": payload.sender.login,
            "comment_id": str(comment.id),
            "url": comment.html_url,
            "delivery": delivery,
        }
        sender = Sender(payload.sender.login, str(payload.sender.type))
        refused = self._screen_change(author_of(comment), sender, body if edited else "")
        if refused is not None:
            refusal, why = refused
            await self._record(
                EventKind.REFUSED,
                delivery,
                reason=refusal.value,
                detail=why,
                channel=channel,
                subjects=(act_id,),
                data=data,
            )
            self.counters.refused += 1
            return
        await self._record(
            EventKind.EDITED if edited else EventKind.DELETED,
            delivery,
            reason="comment-edited" if edited else "comment-deleted",
            detail=body[:TEXT_CHARS] if edited else "",
            channel=channel,
            subjects=(act_id,),
            data=data,
        )

    async def _act_of(self, comment_id: int) -> str | None:
        """The act a comment became, if it became one."""
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        try:
            entry = await bucket.get(f"comment.{comment_id}")
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def _act_or_gone(self, comment_id: int) -> str | None:
        """The act a deleted comment became; if none, the comment is marked seen, so its
        creation, should it arrive after the deletion (redeliveries come in any order),
        is never injected."""
        async with self._one_at_a_time:  # not while the catch-up may be injecting it
            act_id = await self._act_of(comment_id)
            if act_id is None:
                bucket = await self._buckets.get(BRIDGE_BUCKET)
                await bucket.put(seen_key(comment_id), SEEN_DELETED)
            return act_id

    def _screen_change(
        self, author: Author, sender: Sender, new_body: str
    ) -> tuple[Refusal, str] | None:
        """Why an edit or deletion of an act's comment is not recorded, or None."""
        if sender.kind == "Bot":
            return Refusal.BOT, f"{sender.login} is a bot; bots are not recorded"
        refused = screen_author(
            body="",
            author=author,
            bridge_login=self._config.login,
            associations=self._config.associations,
            allowed_logins=self._config.logins,
        )
        return refused if refused is not None else check_text(new_body)

    # -- facts --------------------------------------------------------------------------

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
        """Record an event whose id is ``ev-gh-<cause>``: the cause is a delivery id, or
        a name with ``_`` in it (``comment_<id>``), which no delivery id has (see
        :func:`~agora.bridge.webhook.delivery_problem`): a delivery id chosen by whoever
        replays a signed body can never take the id of a fact still to come."""

        def sign(ident: str, at_ms: int) -> bytes:
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
            subject=event_subject(self._key.name), ident=f"ev-gh-{cause}", sign=sign, act=False
        )


async def _settle(answer: Awaitable[None], what: str, message: Msg) -> None:
    """Send an acknowledgement; if the connection is gone, the server redelivers."""
    try:
        await answer
    except Exception as exc:
        log.warning("could not %s delivery %s: %s", what, delivery_of(message), why(exc))
