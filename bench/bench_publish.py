"""Publishing with acknowledgements: the host's ``publish_acked`` beside nats-py's own.

A host publishes every batch's outputs pipelined and waits for JetStream to acknowledge
each. This times both ways of doing that on one real embedded nats-server, in rounds
taken in turn (so a noisy moment hurts both): nats-py's ``publish_async``
(``agora.core.spine.publish_all``) and :meth:`agora.core.received.RawClient.publish_acked`,
each publishing batches of 256 messages of 900 bytes and waiting for every
acknowledgement. Printed: the publishing process's CPU time and the wall time per
message, medians over the rounds. Nothing is asserted.

    python bench/bench_publish.py [--rounds 6] [--batches 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agora.cli.session import connected
from agora.core.received import RawClient
from agora.core.spine import channel_subject, ensure_spine, publish_all
from agora.host.nats_server import EmbeddedNats

BATCH = 256
MESSAGE_BYTES = 900

Publish = Callable[[list[tuple[str, str, bytes]]], Awaitable[None]]


async def timed(publish: Publish, batches: int, ids: itertools.count[int]) -> tuple[float, float]:
    """(CPU µs, wall µs) per message over ``batches`` batches."""
    subject, data = channel_subject("bench"), b"x" * MESSAGE_BYTES
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(batches):
        await publish([(subject, f"id-{next(ids)}", data) for _ in range(BATCH)])
    count = batches * BATCH
    return (time.thread_time() - cpu) * 1e6 / count, (time.perf_counter() - wall) * 1e6 / count


async def measure(rounds: int, batches: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as workdir:
        async with (
            EmbeddedNats(data_dir=Path(workdir)) as server,
            connected(server.url) as client,
        ):
            assert isinstance(client, RawClient)
            js = client.jetstream()
            await ensure_spine(js)
            ways: dict[str, Publish] = {
                "nats-py publish_async": lambda items: publish_all(js, items),
                "publish_acked": client.publish_acked,
            }
            ids = itertools.count()
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
            for _ in range(rounds):
                for name, publish in ways.items():
                    samples[name].append(await timed(publish, batches, ids))
    return {
        name: {
            "cpu_us_per_message": statistics.median(cpu for cpu, _ in taken),
            "wall_us_per_message": statistics.median(wall for _, wall in taken),
        }
        for name, taken in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=40, help="batches of 256 per round")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    if arguments.rounds < 1 or arguments.batches < 1:
        parser.error("--rounds and --batches: expected at least 1")
    results = asyncio.run(measure(arguments.rounds, arguments.batches))
    if arguments.json:
        print(json.dumps(results))
        return
    for name, figures in results.items():
        print(
            f"{name:<40} {figures['cpu_us_per_message']:6.1f} µs CPU, "
            f"{figures['wall_us_per_message']:6.1f} µs wall per message "
            f"(batches of {BATCH}, acknowledged)"
        )


if __name__ == "__main__":
    main()
