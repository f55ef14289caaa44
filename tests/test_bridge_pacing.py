"""GitHub's pacing rules: 80 writes a minute, 500 an hour, and the order of waits."""

from __future__ import annotations

import pytest

from agora.bridge.pacing import MAX_BACKOFF_S, WritePacer, retry_delay


def test_no_more_than_80_writes_in_any_minute() -> None:
    pacer = WritePacer()
    now = 1000.0
    sent: list[float] = []
    while len(sent) < 300:
        wait = pacer.wait_s(now)
        now += wait
        pacer.record(now)
        sent.append(now)
        now += 0.01  # the agents talk far faster than GitHub allows
    for i, start in enumerate(sent):
        in_window = [t for t in sent[i:] if t < start + 60.0]
        assert len(in_window) <= 80
    assert sent[80] - sent[0] >= 60.0


def test_no_more_than_500_writes_in_any_hour() -> None:
    pacer = WritePacer(per_minute=10_000)
    now = 0.0
    for _ in range(500):
        assert pacer.wait_s(now) == 0.0
        pacer.record(now)
        now += 1.0
    assert pacer.wait_s(now) == pytest.approx(3600.0 - 500.0)
    assert pacer.wait_s(3600.0) == 0.0


@pytest.mark.parametrize(
    ("status", "headers", "failures", "delay"),
    [
        (403, {"Retry-After": "30"}, 1, 30.0),
        (429, {"retry-after": "5", "x-ratelimit-remaining": "0"}, 1, 5.0),
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1120"}, 1, 21.0),
        (403, {}, 1, 60.0),
        (403, {}, 2, 120.0),
        (502, {}, 3, 240.0),
        (503, {}, 30, MAX_BACKOFF_S),
        (404, {}, 1, None),
        (422, {"retry-after": "1"}, 1, None),
    ],
)
def test_retry_delay_follows_githubs_order(
    status: int, headers: dict[str, str], failures: int, delay: float | None
) -> None:
    assert retry_delay(status, headers, failures=failures, now_epoch_s=1100.0) == delay
