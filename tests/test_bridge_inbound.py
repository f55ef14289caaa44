"""Comments in as signed acts, through real webhooks from the GitHub stand-in."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from githubkit import GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from agora.bridge.deliveries import Patience
from agora.bridge.inbound import INBOUND_CONSUMER, act_id_for_comment
from agora.bridge.streams import (
    BRIDGE_BUCKET,
    DELIVERIES_BUCKET,
    OUT_BUCKET,
    WEBHOOK_STREAM,
    WEBHOOK_SUBJECT_PREFIX,
    ensure_bridge_streams,
)
from agora.bridge.webhook import body_key, signature_of
from agora.cli.workspace import AgentPlan
from agora.core.acts import Performative
from agora.core.envelope import Act, Event, EventKind
from agora.core.ids import now_ms
from agora.core.received import MSG_ID_HEADER
from agora.core.signing import sign_fact
from agora.core.spine import FRESH_FOR_MS, STREAM, channel_subject, read_in_order
from tests.bridge_harness import HUMAN, REPO, SECRET, Loop, github_loop, until

SYNTH = {"synth-agent": AgentPlan("chatty", ("build-coord",))}
QUIET = {"mirror": []}  # no status comments: only the inbound side at work
FAST = Patience(attempts=10, first_retry_s=0.05, longest_retry_s=0.2, github_read_s=0.5)


async def test_a_members_comment_becomes_a_signed_act_an_agent_answers(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        comment = loop.github.comment(REPO, loop.issue, "/agora request ship v0.3?", by=HUMAN)
        await loop.delivered()
        [act] = loop.host.acts_by("bridge")
        assert act.id == act_id_for_comment(comment)
        assert (act.act, act.payload, act.channel) == (
            Performative.REQUEST,
            "ship v0.3?",
            "build-coord",
        )
        assert act.hops == loop.host.session.config.hops
        assert act.provenance["login"] == HUMAN
        assert act.provenance["comment_id"] == str(comment)
        assert act.provenance["url"].endswith(str(comment))
        assert act.provenance["delivery"]
        assert [a.in_reply_to for a in loop.host.acts_by("synth-agent")] == [act.id]


async def test_comments_that_must_not_speak_are_refused_as_facts(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        loop.github.comment(REPO, loop.issue, "let me in", by="drive-by")
        pull = loop.github.create_issue(REPO, "A change", "", by=HUMAN, pull_request=True)
        # linked as of GitHub's clock, to the second: the comment below is not before it
        linked_at = datetime.now(UTC).replace(microsecond=0)
        await loop.bridge.links.link(REPO, pull, "secret-ops", at=linked_at)  # type: ignore[union-attr]
        loop.github.comment(REPO, pull, "on the pull request", by=HUMAN)
        loop.github.comment(REPO, loop.issue, "/agora dance", by=HUMAN)
        # The bridge's own comment, posted through the API, comes back as a webhook.
        async with _client(loop) as gh:
            await gh.rest.issues.async_create_comment(
                "octo", "repo", loop.issue, body="status <!-- agora:status -->"
            )
        await loop.delivered()
        assert loop.host.acts_by("bridge") == []
        assert loop.host.delivered_to("synth-agent") == []
        reasons = sorted(e.reason for e in loop.host.events(EventKind.REFUSED))
    assert reasons == ["bad-command", "not-allowed", "own-comment", "pull-request"]


def _client(loop: Loop) -> GitHub[TokenAuthStrategy]:
    return GitHub(
        TokenAuthStrategy(loop.token),
        base_url=loop.bridge.config.api_url,
        auto_retry=False,
        http_cache=False,
        cache_strategy=MemCacheStrategy(),
    )


async def test_edits_and_deletions_are_recorded(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}) as loop:
        comment = loop.github.comment(REPO, loop.issue, "first words", by=HUMAN)
        await loop.delivered()
        loop.github.edit_comment(REPO, comment, "second thoughts", by=HUMAN)
        loop.github.delete_comment(REPO, comment, by=HUMAN)
        await loop.delivered()
        [edited] = loop.host.events(EventKind.EDITED)
        [deleted] = loop.host.events(EventKind.DELETED)
    assert edited.subjects == deleted.subjects == (act_id_for_comment(comment),)
    assert edited.detail == "second thoughts"


async def test_an_edit_that_writes_the_bridges_marker_is_recorded_all_the_same(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # The marker says "the bridge's own comment" only when the bridge wrote it: an author
    # writing it into an edit of their act must not keep the edit and the deletion off
    # the record.
    async with github_loop(tmp_path, components, agents={}) as loop:
        comment = loop.github.comment(REPO, loop.issue, "first words", by=HUMAN)
        await loop.delivered()
        loop.github.edit_comment(REPO, comment, "changed <!-- agora:status -->", by=HUMAN)
        loop.github.delete_comment(REPO, comment, by=HUMAN)
        await loop.delivered()
        [edited] = loop.host.events(EventKind.EDITED)
        [deleted] = loop.host.events(EventKind.DELETED)
    assert edited.subjects == deleted.subjects == (act_id_for_comment(comment),)
    assert edited.detail == "changed <!-- agora:status -->"


async def test_the_kill_label_stops_the_channel_and_unlabel_resumes_it(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        loop.github.add_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        await loop.delivered()
        host = loop.host.running()
        await host.killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        loop.github.comment(REPO, loop.issue, "anyone?", by=HUMAN)
        await loop.delivered()
        assert loop.host.delivered_to("synth-agent") == []
        loop.github.remove_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        await loop.delivered()
        await host.killswitch.wait_for(lambda s: not s.stopped)
        loop.github.comment(REPO, loop.issue, "back", by=HUMAN)
        await loop.delivered()
        assert [a.payload for a in loop.host.delivered_to("synth-agent")] == ["back"]
        [killed] = loop.host.events(EventKind.KILLED)
    assert killed.actor == "bridge" and killed.channel == "build-coord"
    assert killed.data["login"] == HUMAN


async def test_a_label_links_an_issue_to_a_channel(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}) as loop:
        other = loop.github.create_issue(REPO, "Secrets", "", by=HUMAN)
        loop.github.comment(REPO, other, "before the link", by=HUMAN)
        loop.github.add_label(REPO, other, "agora:channel:secret-ops", by=HUMAN)
        await loop.delivered()
        loop.github.comment(REPO, other, "after the link", by=HUMAN)
        await loop.delivered()
        acts = loop.host.acts_by("bridge")
    assert [(a.channel, a.payload) for a in acts] == [("secret-ops", "after the link")]


async def test_bad_webhooks_are_refused_with_no_effect(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}) as loop:
        url = loop.bridge.url + "/webhook"
        body = json.dumps({"action": "created"}).encode()
        good = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "issue_comment",
            "X-GitHub-Delivery": "d-1",
        }
        cases = [
            ({**good}, body, 401),
            ({**good, "X-Hub-Signature-256": "sha256=" + "0" * 64}, body, 401),
            ({"X-Hub-Signature-256": signature_of(SECRET, body)}, body, 400),
            ({**good, "X-Hub-Signature-256": signature_of(SECRET, b"{nope")}, b"{nope", 400),
            ({**good, "X-Hub-Signature-256": signature_of(SECRET, b"[1]")}, b"[1]", 400),
        ]
        big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
        cases.append(({**good, "X-Hub-Signature-256": signature_of(SECRET, big)}, big, 413))
        async with aiohttp.ClientSession() as session:
            for headers, data, status in cases:
                async with session.post(url, data=data, headers=headers) as response:
                    assert response.status == status
                    assert "error" in await response.json()
            headers = {**good, "X-GitHub-Event": "star", "X-GitHub-Delivery": "d-2"}
            headers["X-Hub-Signature-256"] = signature_of(SECRET, body)
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 202
                assert await response.json() == {"ignored": "star"}
            for path in ("/healthz", "/readyz"):
                async with session.get(loop.bridge.url + path) as response:
                    assert response.status == 200
        info = await loop.host.js.stream_info(WEBHOOK_STREAM)
        assert info.state.messages == 0
        [ping] = [d for d in loop.github.deliveries if d.event == "ping"]
        assert ping.status_code == 200  # GitHub's ping is answered


async def test_a_replayed_delivery_has_no_second_effect_even_after_a_restart(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        loop.github.comment(REPO, loop.issue, "only once", by=HUMAN)
        await loop.delivered()
        [delivery] = [d for d in loop.github.deliveries if d.event == "issue_comment"]
        await loop.restart_bridge()
        # Forget JetStream's duplicate window entirely: only the bridge's memory is left.
        await loop.host.js.purge_stream(WEBHOOK_STREAM)
        loop.github.redeliver(delivery.id)
        await loop.delivered()
        assert len(loop.host.acts_by("bridge")) == 1
        assert len(loop.host.delivered_to("synth-agent")) == 1
        assert isinstance(loop.host.acts_by("bridge")[0], Act)
        assert loop.bridge.receiver is not None
        assert loop.bridge.receiver.duplicates == 1


async def test_comments_made_while_the_bridge_was_down_are_caught_up_once(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        before = loop.github.comment(REPO, loop.issue, "heard live", by=HUMAN)
        await loop.delivered()
        port = int(loop.bridge.url.rsplit(":", 1)[1])
        await loop.bridge.stop()
        missed = [
            loop.github.comment(REPO, loop.issue, f"said while down {n}", by=HUMAN)
            for n in range(3)
        ]
        loop.github.comment(REPO, loop.issue, "who are you?", by="drive-by")
        await loop.github.drain()
        failed = [d for d in loop.github.deliveries if d.status_code == 0]
        assert len(failed) == 4  # GitHub could not reach the bridge
        loop.bridge.url = f"http://127.0.0.1:{port}"
        await loop.restart_bridge()
        await loop.bridge.caught_up.wait()
        await loop.delivered()
        # GitHub's failed deliveries arrive again later: they must change nothing.
        for delivery in failed:
            loop.github.redeliver(delivery.id)
        await loop.delivered()
        injected = [a.provenance["comment_id"] for a in loop.host.acts_by("bridge")]
        assert injected == [str(c) for c in (before, *missed)]
        assert len(loop.host.delivered_to("synth-agent")) == 4
        refused = [e for e in loop.host.events(EventKind.REFUSED) if e.actor == "bridge"]
        assert [e.reason for e in refused] == ["not-allowed"]


async def test_a_signed_comment_body_replayed_under_another_delivery_id_has_no_second_effect(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # GitHub's signature covers the body, not the delivery id: anyone holding an old
    # delivery can post it again under a fresh id. Its body was handled: no effect.
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        comment = loop.github.comment(REPO, loop.issue, "first words", by=HUMAN)
        loop.github.edit_comment(REPO, comment, "second thoughts", by=HUMAN)
        await loop.delivered()
        [edit] = [d for d in loop.github.deliveries if d.action == "edited"]
        answer = await _post_webhook(loop, "issue_comment", "replayed-0001", edit.body)
        assert answer == (200, {"duplicate": "replayed-0001"})
        # one that reached the stream all the same (before its first copy was handled,
        # say) is known by its body there too
        await loop.host.js.publish(
            WEBHOOK_SUBJECT_PREFIX + "issue_comment",
            edit.body,
            headers={"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "replayed-0002"},
        )
        await loop.delivered()
        assert len(loop.host.events(EventKind.EDITED)) == 1


async def test_a_signed_comment_body_posted_again_as_another_event_is_no_bad_delivery(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # Nor does the signature cover the event header: a comment's body posted again as
    # "issues" under fresh delivery ids would fail to parse, each one a refused fact.
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        inbound = loop.bridge.inbound
        assert inbound is not None
        loop.github.comment(REPO, loop.issue, "first words", by=HUMAN)
        await until(lambda: inbound.counters.handled == 1, what="the comment handled")
        [created] = [d for d in loop.github.deliveries if d.event == "issue_comment"]
        answer = await _post_webhook(loop, "issues", "swapped-0001", created.body)
        assert answer == (200, {"duplicate": "swapped-0001"})
        # one that reached the stream all the same is known by its body there too
        await loop.host.js.publish(
            WEBHOOK_SUBJECT_PREFIX + "issues",
            created.body,
            headers={"X-GitHub-Event": "issues", "X-GitHub-Delivery": "swapped-0002"},
        )
        loop.github.comment(REPO, loop.issue, "later words", by=HUMAN)  # handled after it
        await until(lambda: inbound.counters.handled == 2, what="the later comment handled")
        await loop.host.settle()
        assert inbound.counters.malformed == 0
        assert _refused(loop, "bad-delivery") == []


async def test_a_label_event_replayed_under_another_delivery_id_is_superseded(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # A label event's body is not remembered (two can be the very same bytes): a
    # replay is an old event, and a later one for the label was taken already.
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        loop.github.add_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        loop.github.remove_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        loop.github.add_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        await loop.delivered()
        host = loop.host.running()
        await host.killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        [unlabeled] = [d for d in loop.github.deliveries if d.action == "unlabeled"]
        status, _ = await _post_webhook(loop, "issues", "replayed-0001", unlabeled.body)
        assert status == 202
        await loop.delivered()
        assert host.killswitch.state.blocks("synth-agent", "build-coord")
        assert loop.bridge.inbound is not None and loop.bridge.inbound.counters.ignored >= 1


async def test_another_repository_cannot_link_or_speak(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        loop.github.add_user("stranger", association="OWNER")
        loop.github.create_repo("stranger/playground")
        issue = loop.github.create_issue("stranger/playground", "mine", "", by="stranger")
        loop.github.add_label(
            "stranger/playground", issue, "agora:channel:build-coord", by="stranger"
        )
        loop.github.comment(
            "stranger/playground", issue, "/agora request deploy now", by="stranger"
        )
        loop.github.add_label("stranger/playground", issue, "agora:kill", by="stranger")
        await loop.delivered()
        assert loop.host.acts_by("bridge") == []
        assert not loop.host.running().killswitch.state.stopped
        refused = [e for e in loop.host.events(EventKind.REFUSED) if e.actor == "bridge"]
    assert {e.reason for e in refused} == {"unknown-repository"}
    assert len(refused) >= 3


async def test_a_comment_handled_again_long_after_publishes_the_very_same_act(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # The bridge stopped after publishing the comment's act and before marking it
    # handled; the delivery comes again past JetStream's duplicate window.
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        comment = loop.github.comment(REPO, loop.issue, "only once", by=HUMAN)
        await loop.delivered()
        [delivery] = [d for d in loop.github.deliveries if d.event == "issue_comment"]
        js = loop.host.js
        await (await js.key_value(BRIDGE_BUCKET)).purge(f"seen.{comment}")
        handled = await js.key_value(DELIVERIES_BUCKET)
        for key in (delivery.guid, body_key(delivery.body)):  # as if never marked handled
            await handled.purge(key)
        for name in (STREAM, WEBHOOK_STREAM):
            info = await js.stream_info(name)
            await js.update_stream(replace(info.config, duplicate_window=0.2))
        await asyncio.sleep(0.5)
        loop.github.redeliver(delivery.id)
        await loop.delivered()
        assert loop.bridge.inbound is not None and loop.bridge.inbound.counters.handled == 2
        [first, again] = await _copies(
            js, channel_subject("build-coord"), f"act-gh-comment-{comment}"
        )
        assert first == again  # the very bytes: not signed again with a later time
        await loop.host.settle()
        assert len(loop.host.acts_by("bridge")) == 1
        assert len(loop.host.delivered_to("synth-agent")) == 1
        assert not [e for e in loop.host.events(EventKind.REFUSED) if e.reason == "unverified"]


async def _copies(js: JetStreamContext, subject: str, msg_id: str) -> list[bytes]:
    """The data of every message on ``subject`` published under ``msg_id``."""
    found: list[bytes] = []
    subscription = await read_in_order(js, subjects=[subject], after_seq=0)
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=0.5)
            except TimeoutError:
                return found
            if (message.headers or {}).get(MSG_ID_HEADER) == msg_id:
                found.append(message.data)
    finally:
        await subscription.unsubscribe()


async def _deliveries_to_the_worker(loop: Loop) -> int:
    """How many times JetStream has handed the inbound worker a delivery, retries too."""
    info = await loop.host.js.consumer_info(WEBHOOK_STREAM, INBOUND_CONSUMER)
    return info.delivered.consumer_seq


def _refused(loop: Loop, reason: str) -> list[Event]:
    return [e for e in loop.host.events(EventKind.REFUSED) if e.reason == reason]


async def _post_webhook(loop: Loop, event: str, delivery: str, body: bytes) -> tuple[int, object]:
    """Send a delivery as GitHub would, signed with the webhook's secret (or a signed body
    posted again, as anyone holding it could, under a delivery id of their choosing);
    the receiver's status and answer."""
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature_of(SECRET, body),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(loop.bridge.url + "/webhook", data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


def test_a_failing_delivery_is_retried_ever_further_apart_for_about_an_hour() -> None:
    patience = Patience()
    waits = [patience.retry_after_s(attempt) for attempt in range(1, patience.attempts)]
    assert waits == sorted(waits)
    assert (waits[0], waits[-1]) == (patience.first_retry_s, patience.longest_retry_s)
    assert 45 * 60 < patience.retrying_s() < 75 * 60  # far past JetStream's 5 x 30 s


async def test_a_delivery_that_fails_more_than_five_times_is_retried_until_handled(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET, patience=FAST) as loop:
        inbound = loop.bridge.inbound
        assert inbound is not None
        await loop.bridge.caught_up.wait()
        # A real outage: the bucket where the bridge notes what it did is gone.
        await loop.host.js.delete_key_value(BRIDGE_BUCKET)
        before = await _deliveries_to_the_worker(loop)
        comment = loop.github.comment(REPO, loop.issue, "said during an outage", by=HUMAN)
        await loop.github.drain()
        deadline = asyncio.get_running_loop().time() + 20
        while await _deliveries_to_the_worker(loop) < before + 7:  # JetStream's old limit: 5
            assert asyncio.get_running_loop().time() < deadline, "not tried seven times"
            await asyncio.sleep(0.05)
        assert inbound.counters.injected == 0
        await ensure_bridge_streams(loop.host.js)
        await until(lambda: inbound.counters.injected == 1, what="the comment injected")
        await loop.host.settle()
        [act] = loop.host.acts_by("bridge")
        assert act.id == act_id_for_comment(comment)
        assert loop.host.events(EventKind.FAULT) == []


async def test_a_delivery_that_never_succeeds_is_kept_and_recorded_as_a_fault(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    patience = replace(FAST, attempts=3)
    async with github_loop(
        tmp_path, components, agents={}, bridge=QUIET, patience=patience
    ) as loop:
        await loop.bridge.caught_up.wait()
        await loop.host.js.delete_key_value(BRIDGE_BUCKET)
        loop.github.comment(REPO, loop.issue, "never heard", by=HUMAN)
        await loop.github.drain()
        await until(lambda: bool(loop.host.events(EventKind.FAULT)), what="a fault fact")
        [fault] = loop.host.events(EventKind.FAULT)
        [delivery] = [d for d in loop.github.deliveries if d.event == "issue_comment"]
        kept = await loop.host.js.get_msg(WEBHOOK_STREAM, int(fault.data["stream_seq"]))
        handled = await loop.host.js.key_value(DELIVERIES_BUCKET)
        with pytest.raises(KeyNotFoundError):  # a redelivery from GitHub is tried afresh
            await handled.get(delivery.guid)
        assert loop.bridge.inbound is not None and loop.bridge.inbound.counters.failed == 1
    assert (fault.actor, fault.reason) == ("bridge", "delivery-failed")
    assert (fault.data["delivery"], fault.data["attempts"]) == (delivery.guid, "3")
    assert "given up after 3 attempts" in fault.detail
    assert kept.data == delivery.body


async def test_a_stored_delivery_whose_id_cannot_name_facts_is_refused_at_once(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        loop.github.add_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        await loop.delivered()
        [labeled] = [d for d in loop.github.deliveries if d.action == "labeled"]
        # Stored before the receiver refused such ids: ev-gh-<id>-killed is over 64 chars.
        too_long = "f" * 60
        await loop.host.js.publish(
            WEBHOOK_SUBJECT_PREFIX + "issues",
            labeled.body,
            headers={
                MSG_ID_HEADER: too_long,
                "X-GitHub-Event": "issues",
                "X-GitHub-Delivery": too_long,
            },
        )
        await until(lambda: bool(_refused(loop, "bad-delivery")), timeout_s=10, what="refusal")
        [refused] = _refused(loop, "bad-delivery")
        assert loop.bridge.inbound is not None and loop.bridge.inbound.counters.retried == 0
    assert refused.data["delivery"] == too_long
    assert "1 to 50 letters, digits or '-'" in refused.detail


async def test_an_edit_whose_text_is_not_valid_unicode_is_refused_at_once(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        comment = loop.github.comment(REPO, loop.issue, "first words", by=HUMAN)
        await loop.delivered()
        loop.github.edit_comment(REPO, comment, "second thoughts", by=HUMAN)
        await loop.delivered()
        [edit] = [d for d in loop.github.deliveries if d.action == "edited"]
        payload = json.loads(edit.body)
        payload["comment"]["body"] = "broken \ud800 text"
        body = json.dumps(payload).encode()  # the lone surrogate as a JSON escape
        status, _ = await _post_webhook(loop, "issue_comment", "edit-with-a-lone-surrogate", body)
        assert status == 202
        await until(lambda: bool(_refused(loop, "bad-text")), timeout_s=10, what="refusal")
        assert loop.bridge.inbound is not None and loop.bridge.inbound.counters.retried == 0
        [refused] = _refused(loop, "bad-text")
        [edited] = loop.host.events(EventKind.EDITED)
    assert refused.subjects == (act_id_for_comment(comment),)
    assert "lone surrogate" in refused.detail
    assert edited.detail == "second thoughts"


async def test_only_edits_of_comments_that_became_acts_are_recorded(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        stranger = loop.github.comment(REPO, loop.issue, "let me in", by="drive-by")
        spoken = loop.github.comment(REPO, loop.issue, "first words", by=HUMAN)
        async with _client(loop) as gh:  # the bridge's status comment, posted and refreshed
            posted = await gh.rest.issues.async_create_comment(
                "octo", "repo", loop.issue, body="status <!-- agora:status -->"
            )
            await gh.rest.issues.async_update_comment(
                "octo", "repo", posted.parsed_data.id, body="status, later <!-- agora:status -->"
            )
        await loop.delivered()
        loop.github.edit_comment(REPO, stranger, "let me in, please", by="drive-by")
        loop.github.edit_comment(REPO, spoken, "second thoughts", by=HUMAN)
        loop.github.delete_comment(REPO, stranger, by="drive-by")
        await loop.delivered()
        edited = loop.host.events(EventKind.EDITED)
        deleted = loop.host.events(EventKind.DELETED)
    assert [(e.subjects, e.detail) for e in edited] == [
        ((act_id_for_comment(spoken),), "second thoughts")
    ]
    assert deleted == []


async def test_a_repository_spelled_in_another_case_still_hears_its_comments(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    links = {"links": {"build-coord": "Octo/Repo#1"}}  # GitHub spells it octo/repo
    async with github_loop(tmp_path, components, agents={}, bridge={**QUIET, **links}) as loop:
        assert loop.issue == 1
        comment = loop.github.comment(REPO, loop.issue, "heard all the same", by=HUMAN)
        await loop.delivered()
        [act] = loop.host.acts_by("bridge")
    assert (act.id, act.channel) == (act_id_for_comment(comment), "build-coord")


async def test_a_deletion_that_arrives_before_its_creation_keeps_the_comment_silent(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents={}, bridge=QUIET) as loop:
        await loop.bridge.caught_up.wait()
        await loop.stop_bridge()
        comment = loop.github.comment(REPO, loop.issue, "oops: ship to prod now", by=HUMAN)
        loop.github.delete_comment(REPO, comment, by=HUMAN)
        await loop.github.drain()
        failed = [d for d in loop.github.deliveries if d.event == "issue_comment"]
        assert [d.action for d in failed] == ["created", "deleted"]
        await loop.restart_bridge()
        await loop.bridge.caught_up.wait()
        for delivery in reversed(failed):  # redeliveries may come in any order
            loop.github.redeliver(delivery.id)
            await loop.delivered()
        assert loop.host.acts_by("bridge") == []
        assert loop.host.events(EventKind.DELETED) == []


async def test_an_act_whose_first_copy_landed_too_late_goes_out_under_a_new_id_edits_follow(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH, bridge=QUIET) as loop:
        await loop.bridge.caught_up.wait()
        await loop.stop_bridge()
        comment = loop.github.comment(REPO, loop.issue, "ship it", by=HUMAN)
        await loop.github.drain()
        first = act_id_for_comment(comment)
        await _first_copy_landing_late(loop, first, "ship it")
        await loop.host.settle()
        await loop.restart_bridge()  # the catch-up finds the comment
        await loop.bridge.caught_up.wait()
        await loop.delivered()
        loop.github.edit_comment(REPO, comment, "ship it, please", by=HUMAN)
        await loop.delivered()
        recorded = sorted(act.id for act in loop.host.acts_by("bridge"))
        delivered = [act.id for act in loop.host.delivered_to("synth-agent")]
        [edited] = loop.host.events(EventKind.EDITED)
        assert recorded == [first, f"{first}-r2"]  # the late copy, and the act issued again
        assert delivered == [f"{first}-r2"]  # the late copy reached no agent
        assert edited.subjects == (f"{first}-r2",)
        assert _refused(loop, "unverified") == []  # the recorder took both


async def _first_copy_landing_late(loop: Loop, ident: str, text: str) -> None:
    """As a bridge whose first publish of an act was held up past FRESH_FOR_MS leaves it:
    the envelope kept long ago, its copy stored in the stream only now."""
    js = loop.host.js
    signed_ms = now_ms() - FRESH_FOR_MS - 10_000
    act = Act(
        id=ident,
        conversation=ident,
        sender="bridge",
        channel="build-coord",
        act=Performative.INFORM,
        payload=text,
        hops=loop.host.session.config.hops,
        time_ms=signed_ms,
        provenance={"source": "github-comment", "login": HUMAN},
    )
    envelope = sign_fact(act, loop.host.session.key("bridge"))
    record = {
        "signed_ms": signed_ms,
        "after_seq": (await js.stream_info(STREAM)).state.last_seq,
        "envelope": base64.b64encode(envelope).decode(),
    }
    await (await js.key_value(OUT_BUCKET)).put(ident, json.dumps(record).encode())
    await js.publish(channel_subject("build-coord"), envelope, headers={MSG_ID_HEADER: ident})
