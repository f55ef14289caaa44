"""The outside world for the host benchmarks: publishes prepared messages from a process
of its own, as a bridge, another host or ``agora inject`` would, so that what it costs
to publish is not counted against the process measured.

    python bench/bench_load.py --url URL --file MESSAGES [--rate R]

``MESSAGES`` holds one message per line: ``subject<TAB>msg-id<TAB>base64 payload`` (an
empty msg-id publishes without ``Nats-Msg-Id``). With ``--rate`` the messages are
offered at that many per second against an absolute schedule; without, as fast as
JetStream acknowledges them, pipelined. SIGTERM stops it early. Once connected it
prints ``ready`` and starts at once. The last line printed
is a JSON object: ``start_ns`` and ``end_ns``, the time each message was sent
(``sent_ns``, keyed by msg-id, paced runs only) and the rate actually offered. Times are
``time.perf_counter_ns``, which on Linux is the system-wide ``CLOCK_MONOTONIC``, so the
benchmark's own process can compare them with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import nats
from nats.js import JetStreamContext

from agora.core.received import MSG_ID_HEADER

WINDOW: Final = 1024  # publishes in flight at once in a burst
READY: Final = "ready"  # the first line printed, once connected: publishing starts now


Message = tuple[str, str, bytes]


def read_messages(path: Path) -> list[Message]:
    messages: list[Message] = []
    for line in path.read_text().splitlines():
        subject, msg_id, payload = line.split("\t")
        messages.append((subject, msg_id, base64.b64decode(payload)))
    return messages


def write_messages(path: Path, messages: Sequence[Message]) -> None:
    path.write_text(
        "".join(
            f"{subject}\t{msg_id}\t{base64.b64encode(payload).decode()}\n"
            for subject, msg_id, payload in messages
        )
    )


async def publish(js: JetStreamContext, message: Message) -> asyncio.Future[Any]:
    subject, msg_id, payload = message
    headers = {MSG_ID_HEADER: msg_id} if msg_id else None
    return await js.publish_async(subject, payload, headers=headers)


async def burst(js: JetStreamContext, messages: Sequence[Message], stop: asyncio.Event) -> int:
    sent = 0
    for first in range(0, len(messages), WINDOW):
        if stop.is_set():
            break
        window = messages[first : first + WINDOW]
        await asyncio.gather(*[await publish(js, message) for message in window])
        sent += len(window)
    return sent


async def paced(
    js: JetStreamContext,
    messages: Sequence[Message],
    rate: float,
    sent_ns: dict[str, int],
    stop: asyncio.Event,
) -> int:
    """One message every ``1/rate`` s against an absolute schedule (a late start is
    caught up, so drift does not accumulate)."""
    interval_ns = 1e9 / rate
    start = time.perf_counter_ns()
    acks: list[asyncio.Future[Any]] = []
    for count, message in enumerate(messages):
        if stop.is_set():
            break
        delay_ns = start + count * interval_ns - time.perf_counter_ns()
        if delay_ns > 0:
            await asyncio.sleep(delay_ns / 1e9)
        sent_ns[message[1]] = time.perf_counter_ns()
        acks.append(await publish(js, message))
    await asyncio.gather(*acks)
    return len(acks)


async def run(url: str, messages: Sequence[Message], rate: float | None) -> dict[str, Any]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await nats.connect(url, connect_timeout=5)
    try:
        js = client.jetstream()
        sent_ns: dict[str, int] = {}
        print(READY, flush=True)
        start_ns = time.perf_counter_ns()
        if rate is None:
            sent = await burst(js, messages, stop)
        else:
            sent = await paced(js, messages, rate, sent_ns, stop)
        end_ns = time.perf_counter_ns()
    finally:
        await client.close()
    return {
        "start_ns": start_ns,
        "end_ns": end_ns,
        "sent": sent,
        "sent_ns": sent_ns,
        "offered_per_s": sent / max((end_ns - start_ns) / 1e9, 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--rate", type=float)
    arguments = parser.parse_args()
    messages = read_messages(arguments.file)
    print(json.dumps(asyncio.run(run(arguments.url, messages, arguments.rate))))


if __name__ == "__main__":
    main()
