"""Signatures checked a batch at a time: in a helper process, or here; and the batch
admission that uses them (each envelope once, each reader its own verdict)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from agora.cli.session import connected
from agora.core.envelope import Act, Fact
from agora.core.errors import InputError
from agora.core.factlog import FactLog
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import Signed, read_envelope, sign_fact
from agora.core.spine import STREAM, channel_subject, ensure_spine, event_subject
from agora.host.nats_server import EmbeddedNats
from agora.host.recorder import Recorder
from agora.host.signature_checks import InlineChecks, WorkerChecks, check_here
from agora.host.signature_helper import encode_request, serve
from agora.host.vouched import Vouched
from tests.factories import make_act, make_event

Admitted = list[tuple[Fact, str] | InputError]


def _forged(envelope: bytes) -> bytes:
    """The same envelope with its signature's first byte changed."""
    decoded = json.loads(envelope)
    signature = decoded["signatures"][0]["sig"]
    decoded["signatures"][0]["sig"] = ("B" if signature[0] == "A" else "A") + signature[1:]
    return json.dumps(decoded).encode()


def _batch(keys: dict[str, SigningKey], registry: KeyRegistry, size: int) -> list[Signed]:
    batch = []
    for n in range(size):
        envelope = sign_fact(make_act(payload=f"n{n}"), keys["synth-agent"])
        batch.append(read_envelope(_forged(envelope) if n % 3 == 1 else envelope, registry))
    return batch


@pytest.fixture
async def worker() -> AsyncIterator[WorkerChecks]:
    checks = WorkerChecks()
    checks.start()
    yield checks
    await checks.close()


async def test_the_helper_gives_the_verdicts_checking_here_gives(
    worker: WorkerChecks, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    batch = _batch(keys, registry, 10)
    verdicts = await worker.check(batch)
    assert verdicts == check_here(batch) == [n % 3 != 1 for n in range(10)]
    assert await InlineChecks().check(batch) == verdicts
    assert await worker.check([]) == []


async def test_concurrent_batches_each_get_their_own_answers(
    worker: WorkerChecks, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    batches = [_batch(keys, registry, size) for size in (1, 7, 3, 12)]
    answers = await asyncio.gather(*(worker.check(batch) for batch in batches))
    assert answers == [check_here(batch) for batch in batches]


async def test_a_batch_of_one_or_two_is_checked_here_without_the_round_trip(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    checks = WorkerChecks()  # not started: a helper exists only once one is asked
    try:
        for size in (1, 2):
            batch = _batch(keys, registry, size)  # the second of each is forged
            assert await checks.check(batch) == check_here(batch) == [True, False][:size]
        assert checks.helper_pid is None
        larger = _batch(keys, registry, 3)
        assert await checks.check(larger) == check_here(larger)
        assert checks.helper_pid is not None
    finally:
        await checks.close()


def _kill(pid: int | None, sig: int = signal.SIGKILL) -> None:
    assert pid is not None
    os.kill(pid, sig)


async def test_a_lost_helper_is_replaced_and_nothing_goes_unchecked(
    worker: WorkerChecks, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    batch = _batch(keys, registry, 6)
    assert await worker.check(batch) == check_here(batch)
    first = worker.helper_pid
    _kill(first)
    # the batch in hand is checked here; the next goes to a new helper
    assert await worker.check(batch) == check_here(batch)
    assert await worker.check(batch) == check_here(batch)
    assert worker.restarts == 1
    assert worker.helper_pid not in (None, first)


async def test_batches_under_way_when_the_helper_dies_keep_their_own_verdicts(
    worker: WorkerChecks, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # forged and good envelopes in batches of different sizes, in flight together while
    # helpers are killed: every batch still gets exactly its own verdicts
    batches = [_batch(keys, registry, size) for size in (5, 1, 8, 2, 6, 3, 7, 4)]
    expected = [check_here(batch) for batch in batches]
    for _ in range(3):
        await worker.check(batches[0])
        tasks = [asyncio.create_task(worker.check(batch)) for batch in batches]
        await asyncio.sleep(0)
        _kill(worker.helper_pid)
        assert await asyncio.gather(*tasks) == expected
    assert await asyncio.gather(*(worker.check(batch) for batch in batches)) == expected


async def test_a_helper_that_stops_answering_is_replaced_even_mid_write(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    checks = WorkerChecks(timeout_s=0.5)
    try:
        small = _batch(keys, registry, 4)
        assert await checks.check(small) == check_here(small)
        _kill(checks.helper_pid, signal.SIGSTOP)  # alive, silent, not reading
        # far more than a pipe holds: the write itself cannot finish
        large = [
            read_envelope(sign_fact(make_act(payload="x" * 60_000), keys["synth-agent"]), registry)
        ] * 8
        started = time.monotonic()
        assert await checks.check(large) == [True] * 8
        assert time.monotonic() - started < 5
        assert checks.restarts == 1
        assert await checks.check(small) == check_here(small)
    finally:
        await checks.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_closing_ends_the_helper_and_later_checks_run_here(
    worker: WorkerChecks, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    batch = _batch(keys, registry, 3)
    await worker.check(batch)
    pid = worker.helper_pid
    assert pid is not None
    await worker.close()
    assert _gone(pid)
    assert await worker.check(batch) == check_here(batch)
    assert worker.helper_pid is None  # no new helper after close


@pytest.mark.parametrize("interrupted", [False, True])
async def test_a_hung_helper_is_killed_at_close_even_if_the_close_is_interrupted(
    keys: dict[str, SigningKey], registry: KeyRegistry, interrupted: bool
) -> None:
    checks = WorkerChecks()
    batch = _batch(keys, registry, 3)
    await checks.check(batch)
    pid = checks.helper_pid
    assert pid is not None
    _kill(pid, signal.SIGSTOP)
    closing = asyncio.create_task(checks.close())
    if interrupted:
        await asyncio.sleep(0.2)
        closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    for _ in range(50):
        if _gone(pid):
            break
        await asyncio.sleep(0.05)
    assert _gone(pid)


def test_the_helper_answers_with_the_request_number_and_stops_at_what_it_cannot_read(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    [good] = _batch(keys, registry, 1)
    check = (good.signer.public_key, good.signature, good.covered())
    request = encode_request(7, [check])
    answers = io.BytesIO()
    serve(io.BytesIO(request + request[:-5]), answers)  # the second request is cut short
    assert answers.getvalue() == b"\x00\x00\x00\x07\x01"
    answers = io.BytesIO()
    serve(io.BytesIO(b"\x00\x00\x00\x01\xff\xff\xff\xff"), answers)  # more than a batch holds
    assert answers.getvalue() == b""
    answers = io.BytesIO()
    serve(io.BytesIO(encode_request(8, [(b"\x00" * 32, *check[1:])])), answers)
    assert answers.getvalue() == b"\x00\x00\x00\x08\x00"
    with pytest.raises(ValueError, match="signature 64"):
        encode_request(9, [(check[0], check[1][:63], check[2])])


class CountingChecks(InlineChecks):
    """Checks here, counting each signature, and waits for a go before answering."""

    def __init__(self) -> None:
        self.checked = 0
        self.go = asyncio.Event()
        self.go.set()

    async def check(self, batch: Sequence[Signed]) -> list[bool]:
        self.checked += len(batch)
        await self.go.wait()
        return await super().check(batch)


async def test_admission_reads_each_envelope_once_and_judges_each_arrival(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    checks = CountingChecks()
    vouched = Vouched(registry, checks=checks)
    act = make_act(sender="synth-agent")
    good = sign_fact(act, keys["synth-agent"])
    event = sign_fact(make_event(), keys["host"])
    outsider = sign_fact(make_act(sender="synth-agent", channel="secret-ops"), keys["synth-agent"])
    results = await vouched.admit_all(
        [
            (good, channel_subject("build-coord")),
            (_forged(good), channel_subject("build-coord")),
            (b"not json", channel_subject("build-coord")),
            (good, channel_subject("release")),  # replayed onto another channel
            (event, event_subject("host")),
            (event, channel_subject("build-coord")),  # an event on a channel
            (outsider, channel_subject("secret-ops")),  # a channel its sender was not granted
            (good, "agora.ch.NOT A CHANNEL"),
        ]
    )
    assert results[0] == (act, "synth-agent")
    messages = [str(r) for r in results]
    assert "does not verify" in messages[1]
    assert "not valid UTF-8 JSON" in messages[2]
    assert "published on 'release'" in messages[3]
    assert not isinstance(results[4], InputError)
    assert "an event was published on channel" in messages[5]
    assert "not granted channel 'secret-ops'" in messages[6]
    assert all(isinstance(r, InputError) for i, r in enumerate(results) if i not in (0, 4))
    checked = checks.checked
    assert checked == 4  # good, forged, event, outsider: each repeat waits for its check
    again = await vouched.admit_all([(good, channel_subject("build-coord"))])
    assert again == [(act, "synth-agent")]
    assert checks.checked == checked  # known now: not checked again


async def _two_readers(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> tuple[CountingChecks, Act, asyncio.Task[Admitted], asyncio.Task[Admitted]]:
    """Two readers of one envelope, the second arriving while the first's check waits."""
    checks = CountingChecks()
    checks.go.clear()
    vouched = Vouched(registry, checks=checks)
    act = make_act(sender="synth-agent")
    arrival = [(sign_fact(act, keys["synth-agent"]), channel_subject("build-coord"))]
    first = asyncio.create_task(vouched.admit_all(arrival))
    await asyncio.sleep(0)
    second = asyncio.create_task(vouched.admit_all(arrival))
    await asyncio.sleep(0)
    return checks, act, first, second


async def test_a_second_reader_waits_for_the_check_under_way(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    checks, act, first, second = await _two_readers(keys, registry)
    checks.go.set()
    assert await first == await second == [(act, "synth-agent")]
    assert checks.checked == 1


async def test_a_reader_left_waiting_checks_for_itself_when_the_first_gives_up(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    checks, act, first, second = await _two_readers(keys, registry)
    first.cancel()
    await asyncio.sleep(0)
    checks.go.set()
    assert await second == [(act, "synth-agent")]
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_an_act_refused_for_its_channel_is_not_grounded(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    vouched = Vouched(registry)
    act = make_act(sender="maintainer", channel="build-coord")
    envelope = sign_fact(act, keys["maintainer"])
    [refused] = await vouched.admit_all([(envelope, channel_subject("secret-ops"))])
    assert isinstance(refused, InputError)
    assert not vouched.grounded(act.id)  # the recorder will refuse it: no shared events
    [admitted] = await vouched.admit_all([(envelope, channel_subject("build-coord"))])
    assert admitted == (act, "maintainer")
    assert vouched.grounded(act.id)


async def test_what_is_known_is_admitted_up_to_the_first_envelope_that_is_not(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    vouched = Vouched(registry)
    signed = make_act(sender="synth-agent")
    envelope = sign_fact(signed, keys["synth-agent"])
    vouched.add(envelope, signed, "synth-agent")
    unknown = sign_fact(make_act(sender="maintainer"), keys["maintainer"])
    arrivals = [
        (envelope, channel_subject("build-coord")),
        (envelope, channel_subject("release")),  # known, but on another channel
        (unknown, channel_subject("build-coord")),
        (envelope, channel_subject("build-coord")),  # after the first unknown: not taken
    ]
    known = vouched.admit_known(arrivals)
    assert len(known) == 2
    assert known[0] == (signed, "synth-agent")
    assert isinstance(known[1], InputError) and "published on 'release'" in str(known[1])
    assert vouched.admit_known(arrivals[2:]) == []


def _stored(envelope: bytes, sequence: int, channel: str = "build-coord") -> Msg:
    """A channel message as the recorder's ordered consumer hands it over."""
    reply = f"$JS.ACK.{STREAM}.recorder.1.{sequence}.{sequence}.1700000000000000000.0"
    return Msg(None, subject=channel_subject(channel), reply=reply, data=envelope)  # type: ignore[arg-type]


def _held_checks(
    keys: dict[str, SigningKey], registry: KeyRegistry, *, known: int
) -> tuple[CountingChecks, Vouched, list[tuple[Act, bytes]]]:
    """Checks that wait for a go, and ``known`` acts of synth-agent's, signed in this
    process (so known without a check)."""
    checks = CountingChecks()
    checks.go.clear()
    vouched = Vouched(registry, checks=checks)
    signed = []
    for _ in range(known):
        act = make_act(sender="synth-agent")
        envelope = sign_fact(act, keys["synth-agent"])
        vouched.add(envelope, act, "synth-agent")
        signed.append((act, envelope))
    return checks, vouched, signed


@asynccontextmanager
async def _recorder(
    directory: Path, keys: dict[str, SigningKey], vouched: Vouched, server: EmbeddedNats
) -> AsyncIterator[Recorder]:
    """A recorder over a real spine, not started: the test hands it batches."""
    async with connected(server.url) as client:
        await ensure_spine(client.jetstream())
        with FactLog.open(directory, signer=keys["host"]) as log:
            yield Recorder(
                client=client,
                factlog=log,
                host_key=keys["host"],
                vouched=vouched,
                checkpoint_every=100,
            )


async def test_the_recorder_writes_what_it_knows_while_later_signatures_are_checked(
    tmp_path: Path,
    keys: dict[str, SigningKey],
    registry: KeyRegistry,
    nats_server: EmbeddedNats,
) -> None:
    # An agent's reply, signed in this process, is written to the log at once, not
    # after the check of a stranger's act that the stream took after it.
    checks, vouched, [(reply, signed)] = _held_checks(keys, registry, known=1)
    later = make_act(sender="maintainer")
    unknown = sign_fact(later, keys["maintainer"])
    written: list[str] = []
    async with _recorder(tmp_path / "facts", keys, vouched, nats_server) as recorder:
        recorder.observers.append(lambda fact: written.append(fact.id))
        recording = asyncio.create_task(recorder.record([_stored(signed, 1), _stored(unknown, 2)]))
        for _ in range(100):
            if written:
                break
            await asyncio.sleep(0.01)
        assert written == [reply.id]
        assert checks.checked == 1 and not recording.done()  # the stranger's waits
        checks.go.set()
        await recording
        recorder.make_durable()
        assert written == [reply.id, later.id]
        assert recorder.position == 2


async def test_a_refusal_at_the_head_of_a_batch_holds_back_the_write_until_it_is_published(
    tmp_path: Path,
    keys: dict[str, SigningKey],
    registry: KeyRegistry,
    nats_server: EmbeddedNats,
) -> None:
    # A known envelope published again on a channel it does not belong to is refused;
    # nothing after it may be written (and so made durable, moving the position past
    # it) before the refusal is in the stream.
    checks, vouched, known = _held_checks(keys, registry, known=2)
    acts, signed = [act for act, _ in known], [envelope for _, envelope in known]
    stranger = make_act(sender="maintainer")
    unknown = sign_fact(stranger, keys["maintainer"])
    written: list[str] = []
    async with _recorder(tmp_path / "facts", keys, vouched, nats_server) as recorder:
        recorder.observers.append(lambda fact: written.append(fact.id))
        batch = [_stored(signed[0], 1, "release"), _stored(signed[1], 2), _stored(unknown, 3)]
        recording = asyncio.create_task(recorder.record(batch))
        await asyncio.sleep(0.1)
        assert recorder.counters.refused == 1 and not recording.done()
        recorder.make_durable()  # what a group commit would do meanwhile
        assert written == [] and recorder.position == 0
        checks.go.set()
        await recording
        recorder.make_durable()
        assert written == [acts[1].id, stranger.id]
        assert recorder.position == 3


def _unsignable(keys: dict[str, SigningKey]) -> bytes:
    """An envelope in the right shape whose payloadType no signature can cover: it is
    not text that encodes (a lone surrogate)."""
    return json.dumps(
        {
            "payload": "e30=",
            "payloadType": "\ud800",
            "signatures": [{"keyid": keys["maintainer"].keyid, "sig": "A" * 86 + "=="}],
        }
    ).encode()


@pytest.mark.parametrize("where", ["here", "helper"])
async def test_an_envelope_no_signature_can_cover_is_refused_and_what_follows_recorded(
    tmp_path: Path,
    keys: dict[str, SigningKey],
    registry: KeyRegistry,
    nats_server: EmbeddedNats,
    *,
    worker: WorkerChecks,
    where: str,
) -> None:
    """One such message once stopped the recorder for good: reading it again after
    every failure, it never got past it."""
    vouched = Vouched(registry, checks=worker if where == "helper" else InlineChecks())
    after = make_act(sender="maintainer")
    written: list[str] = []
    async with _recorder(tmp_path / "facts", keys, vouched, nats_server) as recorder:
        recorder.observers.append(lambda fact: written.append(fact.id))
        batch = [_stored(_unsignable(keys), 1), _stored(sign_fact(after, keys["maintainer"]), 2)]
        await recorder.record(batch)
        recorder.make_durable()
        assert recorder.counters.refused == 1 and written == [after.id]
        assert recorder.position == 2


async def test_the_same_bad_bytes_published_twice_are_refused_twice(
    tmp_path: Path,
    keys: dict[str, SigningKey],
    registry: KeyRegistry,
    nats_server: EmbeddedNats,
) -> None:
    """Each refusal's id follows from the message's place in the stream as well as its
    bytes: the second is neither dropped as a repeat of the first nor refused itself."""
    bad = _forged(sign_fact(make_act(sender="maintainer"), keys["maintainer"]))
    async with _recorder(tmp_path / "facts", keys, Vouched(registry), nats_server) as recorder:
        await recorder.record([_stored(bad, 1), _stored(bad, 2)])
        js = recorder._js
        info = await js.stream_info(STREAM)
        published = [await js.get_msg(STREAM, seq) for seq in range(1, info.state.last_seq + 1)]
    ids = {
        json.loads(base64.b64decode(json.loads(m.data or b"")["payload"]))["id"] for m in published
    }
    assert recorder.counters.refused == 2 and len(published) == 2 and len(ids) == 2


def test_what_is_kept_as_verified_is_bounded_in_bytes_as_well_as_in_number(
    keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    """A flood of large acts cannot make the cache hold gigabytes: past its bytes the
    oldest go first, to be checked again if they come back."""
    vouched = Vouched(registry, limit_bytes=100_000)
    signed = []
    for n in range(10):
        act = make_act(sender="synth-agent", payload=f"{n}" + "x" * 30_000)
        envelope = sign_fact(act, keys["synth-agent"])
        vouched.add(envelope, act, "synth-agent")
        signed.append((envelope, channel_subject(act.channel)))
    assert 60_000 < vouched.cached_bytes <= 100_000
    assert vouched.admit_known(signed[:1]) == []  # the oldest went
    assert len(vouched.admit_known(signed[-2:])) == 2  # the newest are kept
