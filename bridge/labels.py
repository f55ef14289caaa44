"""Label events: the kill label kills or resumes a channel, a link label links an issue.

A label event says who changed the label (its ``sender``), never their author
association, so who may is asked of GitHub: the sender's permission on the repository
(:func:`~agora.bridge.speech.screen_labeller`). A bot is refused outright; a login on
``speakers.logins`` may; anyone else needs write access. Each read from GitHub (the
permission, the labels on the issue now) waits a few seconds at most, so one label
never holds up the deliveries behind it. When GitHub does not answer in time:

- a kill still takes effect (stopping a channel is always safe);
- a resume, a link or an unlink is tried again later (the delivery is put off), since
  nothing may be started or linked by someone who may not.

The kill label's switch, and each link label's link, follow the latest event taken for
that label on that issue, by GitHub's clock, each event doing what it says (see
:meth:`LabelHandler._kill_label`). A refused label is a ``refused`` fact
naming who and why; the switch and the links are left as they were. A link keeps the
time of its ``labeled`` event, by GitHub's clock (:mod:`agora.bridge.links`): the
catch-up injects nothing said before it.

A label event comes by webhook (:meth:`LabelHandler.handle`) or, if its delivery failed,
from the catch-up's listing of the repository's issue events
(:meth:`LabelHandler.listed`), and either way is judged by the rules above, once. The
two name an event differently (a delivery id; the event's id), so an event is known by
what it says: its label, issue, way (added or removed), sender and second of GitHub's
clock. Events alike (a label added, removed and added again by one person within a
second) are told apart by how many came: a :class:`Tally` counts those delivered and
those judged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from githubkit_schemas.latest.models import WebhookIssuesLabeled, WebhookIssuesUnlabeled
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from agora.bridge.config import BridgeConfig
from agora.bridge.github import to_stamp
from agora.bridge.links import Links
from agora.bridge.once import OnceOut
from agora.bridge.speech import Refusal, screen_labeller
from agora.bridge.streams import BRIDGE_BUCKET, Buckets
from agora.core.acts import check_channel
from agora.core.control import record_and_switch
from agora.core.envelope import Event, EventKind
from agora.core.errors import AgoraError, InputError
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import sign_fact, verify_envelope
from agora.core.spine import event_subject

log = logging.getLogger(__name__)

CurrentLabels = Callable[[str, int], Awaitable[set[str]]]  # (repo, number) -> label names
SenderPermission = Callable[[str, str], Awaitable[str]]  # (repo, login) -> admin|write|read|none
LabelEvent = WebhookIssuesLabeled | WebhookIssuesUnlabeled


class Record(Protocol):
    async def __call__(
        self,
        kind: EventKind,
        cause: str,
        *,
        reason: str,
        detail: str,
        channel: str | None = None,
        subjects: tuple[str, ...] = (),
        data: Mapping[str, str] | None = None,
    ) -> None: ...


class Counters(Protocol):
    refused: int
    killed: int
    resumed: int
    ignored: int


class PermissionUnknown(AgoraError):
    """GitHub did not say in time whether a label's sender may change it (transient)."""


@dataclass(frozen=True, slots=True)
class Sender:
    login: str
    kind: str  # User, Bot, Organization


@dataclass(frozen=True, slots=True)
class LabelChange:
    """One label added to or removed from an issue, by its sender, in one delivery (or
    one entry of GitHub's issue events listing, which the catch-up reads)."""

    label: str
    repo: str
    number: int
    added: bool
    sender: Sender
    delivery: str  # the delivery id; for a listed event, a name with "_" (never a delivery id)
    # when GitHub says it happened: the issue's updated_at in a webhook's event, the
    # event's created_at in the listing (GitHub stamps both as the label changes)
    at: datetime

    @property
    def issue(self) -> str:
        return f"{self.repo}#{self.number}"

    @property
    def alike(self) -> str:
        """What this event shares with any other that would do the same: its label,
        issue, way and sender, and the second it happened, by GitHub's clock."""
        way = "added" if self.added else "removed"
        issue = f"{self.repo.lower()}#{self.number}"
        return f"{issue}\n{self.label}\n{way}\n{self.sender.login}\n{to_stamp(self.at)}"


@dataclass(frozen=True, slots=True)
class Tally:
    """Of the events alike (:attr:`LabelChange.alike`): how many were delivered by
    webhook, and how many were judged, whichever way they came. The n-th delivered, or
    the n-th the catch-up lists, is judged only if fewer than n were."""

    delivered: int = 0
    judged: int = 0

    def encode(self) -> bytes:
        return json.dumps({"delivered": self.delivered, "judged": self.judged}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Tally:
        try:
            value = json.loads(data)
            return cls(int(value["delivered"]), int(value["judged"]))
        except (ValueError, KeyError, TypeError):  # not one the bridge wrote: none counted
            return cls()


def change_of(payload: LabelEvent, delivery: str) -> LabelChange:
    """The label change a webhook's ``issues.labeled`` / ``unlabeled`` event says."""
    return LabelChange(
        label=payload.label.name if payload.label else "",
        repo=payload.repository.full_name,
        number=payload.issue.number,
        added=isinstance(payload, WebhookIssuesLabeled),
        sender=Sender(payload.sender.login, str(payload.sender.type)),
        delivery=delivery,
        at=payload.issue.updated_at,
    )


class LabelHandler:
    def __init__(
        self,
        *,
        config: BridgeConfig,
        key: SigningKey,
        registry: KeyRegistry,
        links: Links,
        js: JetStreamContext,
        out: OnceOut,
        record: Record,
        counters: Counters,
        buckets: Buckets,
        current_labels: CurrentLabels | None,
        sender_permission: SenderPermission | None,
        github_read_s: float,
    ) -> None:
        self._config = config
        self._key = key
        self._registry = registry
        self._links = links
        self._js = js
        self._out = out
        self._record = record
        self._counters = counters
        self._buckets = buckets
        self._current_labels = current_labels
        self._sender_permission = sender_permission
        self._read_s = github_read_s

    def acts_on(self, label: str) -> bool:
        """Whether ``label`` is the kill label or a link label."""
        return label == self._config.kill_label or label.startswith(self._config.link_label_prefix)

    async def handle(self, payload: LabelEvent, delivery: str) -> None:
        """A label event delivered by webhook: judged, unless the catch-up judged it
        first (a replay under another delivery id counts as one more delivered)."""
        change = change_of(payload, delivery)
        if not self.acts_on(change.label):
            self._counters.ignored += 1
            return
        tally = await self._tally(change)
        delivered = tally.delivered + 1
        if tally.judged < delivered:
            await self._judge(change)
        else:  # listed by the catch-up, its delivery having failed, and judged then
            self._counters.ignored += 1
        await self._keep(change, Tally(delivered, max(tally.judged, delivered)))

    async def listed(self, change: LabelChange, *, occurrence: int) -> None:
        """A label event the catch-up listed, the ``occurrence``-th alike it listed:
        judged as its webhook would have been, unless it was judged already, whichever
        way it came. Other labels are passed over (not counted: the listing holds every
        label event of the repository)."""
        if not self.acts_on(change.label):
            return
        tally = await self._tally(change)
        if tally.judged < occurrence:
            await self._judge(change)
            await self._keep(change, Tally(tally.delivered, occurrence))

    async def _judge(self, change: LabelChange) -> None:
        prefix = self._config.link_label_prefix
        if change.label.startswith(prefix):
            await self._link_label(change, change.label.removeprefix(prefix))
        else:
            await self._kill_label(change)

    async def _tally(self, change: LabelChange) -> Tally:
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        try:
            entry = await bucket.get(_tally_key(change))
        except KeyNotFoundError:
            return Tally()
        return Tally.decode(entry.value or b"")

    async def _keep(self, change: LabelChange, tally: Tally) -> None:
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        await bucket.put(_tally_key(change), tally.encode())

    # -- the kill label -----------------------------------------------------------------

    async def _kill_label(self, change: LabelChange) -> None:
        channel = await self._links.channel_for(change.repo, change.number)
        if channel is None:
            self._counters.ignored += 1
            return
        # Deliveries arrive out of order (redeliveries, retries) or late, and a replay
        # is an old one again: the switch follows the latest label event taken (by
        # GitHub's clock), each event doing what it says (a "labeled" event never
        # resumes, an "unlabeled" one never kills), and what a sender may do is judged
        # on their own event, never on a state someone else made (a removal by someone
        # without write access, refused, leaves the label off but moves nothing).
        if await self._superseded(change):
            self._counters.ignored += 1
            return
        on = change.added
        permission = await self._permission_of(change, stopping=on)
        refused = self._screen(change, permission, stopping=on)
        if refused is not None:
            await self._refuse(change, refused, channel)
            return
        await self._switch(change, channel, on=on)
        await self._taken(change)

    async def _superseded(self, change: LabelChange) -> bool:
        """Whether a later event for the same label on the same issue was taken already.
        Within one second GitHub's clock cannot tell two events apart: the labels on the
        issue now decide whether this one still stands."""
        taken = await self._last_taken(change)
        if taken is None or change.at > taken:
            return False
        return change.at < taken or await self._label_is_on(change) != change.added

    def _taken_key(self, change: LabelChange) -> str:
        which = f"{change.repo.lower()}#{change.number}\n{change.label}"
        return "label." + hashlib.sha256(which.encode()).hexdigest()[:32]

    async def _last_taken(self, change: LabelChange) -> datetime | None:
        """When the latest event taken for this label on this issue happened, by
        GitHub's clock."""
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        try:
            entry = await bucket.get(self._taken_key(change))
        except KeyNotFoundError:
            return None
        try:
            return datetime.fromisoformat((entry.value or b"").decode())
        except ValueError:  # not one the bridge wrote: no order to keep
            return None

    async def _taken(self, change: LabelChange) -> None:
        bucket = await self._buckets.get(BRIDGE_BUCKET)
        await bucket.put(self._taken_key(change), change.at.isoformat().encode())

    async def _switch(self, change: LabelChange, channel: str, *, on: bool) -> None:
        kind = EventKind.KILLED if on else EventKind.RESUMED
        # one id per delivery and decision: handled again, the same decision is the
        # very same fact (kept), a different one (the label moved since) a fact of its own
        ident = f"ev-gh-{change.delivery}-{kind.value}"
        who = change.sender.login

        def signed_at(at_ms: int) -> Event:
            return Event(
                id=ident,
                kind=kind,
                actor=self._key.name,
                time_ms=at_ms,
                reason="label",
                detail=f"{who} {'added' if on else 'removed'} {change.label!r} on {change.issue}",
                channel=channel,
                data={"login": who, "issue": change.issue, "delivery": change.delivery},
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

        envelope = (
            await self._out.envelope(
                subject=event_subject(self._key.name),
                ident=ident,
                sign=lambda _, at_ms: sign_fact(signed_at(at_ms), self._key),
                act=False,
                meant=lambda envelope: kept(envelope) is not None,
            )
        ).envelope
        event = kept(envelope or b"")
        if envelope is None or event is None:  # pragma: no cover - signed just above
            raise InputError(f"the bridge could not make its {kind.value} event {ident!r}")
        await record_and_switch(self._js, event, envelope)
        if on:
            self._counters.killed += 1
        else:
            self._counters.resumed += 1

    # -- link labels --------------------------------------------------------------------

    async def _link_label(self, change: LabelChange, name: str) -> None:
        if await self._superseded(change):  # as for the kill label
            self._counters.ignored += 1
            return
        refused = self._screen(change, await self._permission_of(change, stopping=False))
        if refused is not None:
            await self._refuse(change, refused)
            return
        try:
            channel = check_channel(name)
            changed = await (
                self._links.link(change.repo, change.number, channel, at=change.at)
                if change.added
                else self._links.unlink(change.repo, change.number, channel)
            )
        except InputError as exc:  # malformed, undeclared, or linked elsewhere already
            await self._record(
                EventKind.REFUSED,
                change.delivery,
                reason="bad-link",
                detail=str(exc),
                data={"issue": change.issue, "login": change.sender.login, "label": change.label},
            )
            self._counters.refused += 1
            return
        await self._taken(change)
        if not changed:  # linked so already, or no label's link to remove
            self._counters.ignored += 1
            return
        await self._record(
            EventKind.NOTE,
            change.delivery,
            reason="linked" if change.added else "unlinked",
            detail=f"{change.issue} {'linked to' if change.added else 'unlinked from'} {channel}",
            channel=channel,
            data={"issue": change.issue, "login": change.sender.login},
        )

    # -- who may, and what GitHub says now ----------------------------------------------

    def _screen(
        self, change: LabelChange, permission: str | None, *, stopping: bool = False
    ) -> tuple[Refusal, str] | None:
        return screen_labeller(
            login=change.sender.login,
            kind=change.sender.kind,
            permission=permission,
            stopping=stopping,
            allowed_logins=self._config.logins,
        )

    async def _permission_of(self, change: LabelChange, *, stopping: bool) -> str | None:
        """The sender's permission on the repository; None if it does not decide (a bot,
        the allow-list) or, for a kill (``stopping``), if GitHub did not answer in time.
        Anything else GitHub leaves unanswered raises :class:`PermissionUnknown`, so the
        delivery is tried again later. Without a way to ask, nobody has any."""
        sender = change.sender
        if sender.kind == "Bot" or sender.login in self._config.logins:
            return None
        if self._sender_permission is None:
            return "none"
        try:
            async with asyncio.timeout(self._read_s):
                return await self._sender_permission(change.repo, sender.login)
        except Exception as exc:
            unknown = (
                f"GitHub did not say within {self._read_s:.0f} s what access "
                f"{sender.login} has to {change.repo}: {type(exc).__name__}"
            )
            if not stopping:
                raise PermissionUnknown(unknown) from exc
            log.warning("%s; the kill is taken all the same", unknown)
            return None

    async def _label_is_on(self, change: LabelChange) -> bool:
        """Whether the label is on the issue now; what the event says if GitHub does not
        answer in time."""
        if self._current_labels is None:
            return change.added
        try:
            async with asyncio.timeout(self._read_s):
                return change.label in await self._current_labels(change.repo, change.number)
        except Exception as exc:
            log.warning(
                "could not read the labels of %s within %.0f s (%s); trusting the event",
                change.issue,
                self._read_s,
                type(exc).__name__,
            )
            return change.added

    async def _refuse(
        self, change: LabelChange, refused: tuple[Refusal, str], channel: str | None = None
    ) -> None:
        refusal, why = refused
        await self._record(
            EventKind.REFUSED,
            change.delivery,
            reason=refusal.value,
            detail=f"{change.label!r} on {change.issue} is not acted on: {why}",
            channel=channel,
            data={"login": change.sender.login, "issue": change.issue, "label": change.label},
        )
        self._counters.refused += 1


def _tally_key(change: LabelChange) -> str:
    return "label-event." + hashlib.sha256(change.alike.encode()).hexdigest()[:32]
