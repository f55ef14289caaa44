"""Comments in as signed acts, through real webhooks from the GitHub stand-in."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import aiohttp
from githubkit import GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from nats.js import JetStreamContext

from agora.bridge.inbound import act_id_for_comment
from agora.bridge.streams import BRIDGE_BUCKET, DELIVERIES_BUCKET, WEBHOOK_STREAM
from agora.bridge.webhook import signature_of
from agora.cli.workspace import AgentPlan
from agora.core.acts import Performative
from agora.core.envelope import Act, EventKind
from agora.core.received import MSG_ID_HEADER
from agora.core.spine import STREAM, channel_subject, read_in_order
from tests.bridge_harness import HUMAN, REPO, SECRET, Loop, github_loop

SYNTH = {"synth-agent": AgentPlan("chatty", ("build-coord",))}


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
        await loop.bridge.links.link(REPO, pull, "build-coord")  # type: ignore[union-attr]
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
        good = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "d-1"}
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
            headers = {"X-GitHub-Event": "star", "X-GitHub-Delivery": "d-2"}
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


async def test_an_out_of_order_or_replayed_unlabel_cannot_resume_a_killed_channel(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with github_loop(tmp_path, components, agents=SYNTH) as loop:
        loop.github.add_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        loop.github.remove_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        loop.github.add_label(REPO, loop.issue, "agora:kill", by=HUMAN)
        await loop.delivered()
        host = loop.host.running()
        await host.killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        # The old "unlabeled" delivery, replayed under a fresh delivery id: its signature
        # is genuine, but the label is on the issue, so the channel stays killed.
        [unlabeled] = [d for d in loop.github.deliveries if d.action == "unlabeled"]
        headers = {
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": "replayed-0001",
            "X-Hub-Signature-256": signature_of(SECRET, unlabeled.body),
        }
        async with aiohttp.ClientSession() as session:
            url = loop.bridge.url + "/webhook"
            async with session.post(url, data=unlabeled.body, headers=headers) as response:
                assert response.status == 202
        await loop.delivered()
        assert host.killswitch.state.blocks("synth-agent", "build-coord")


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
        await (await js.key_value(DELIVERIES_BUCKET)).purge(delivery.guid)
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
