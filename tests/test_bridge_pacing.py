"""GitHub's pacing rules: 80 writes a minute, 500 an hour, and the order of waits."""

from __future__ import annotations

import pytest

from agora.bridge.pacing import (
    LONGEST_WAIT_S,
    MAX_BACKOFF_S,
    WritePacer,
    is_rate_limited,
    retry_delay,
)


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


SECONDARY = "You have exceeded a secondary rate limit. Please wait a few minutes."


@pytest.mark.parametrize(
    ("status", "headers", "message", "failures", "delay"),
    [
        (403, {"Retry-After": "30"}, "", 1, 30.0),
        (429, {"retry-after": "5", "x-ratelimit-remaining": "0"}, "", 1, 5.0),
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1120"}, "", 1, 21.0),
        (403, {}, SECONDARY, 1, 60.0),
        (403, {}, SECONDARY, 2, 120.0),
        (429, {}, "", 1, 60.0),
        (502, {}, "", 3, 240.0),
        (503, {}, "", 30, MAX_BACKOFF_S),
        (404, {}, "", 1, None),
        (422, {"retry-after": "1"}, "", 1, None),
        # never longer than an hour and a minute, whatever the answer says
        (429, {"retry-after": "1000000000"}, "", 1, LONGEST_WAIT_S),
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "9e12"}, "", 1, LONGEST_WAIT_S),
        (429, {"retry-after": "inf"}, "", 1, 60.0),
        (429, {"retry-after": "nan"}, "", 1, 60.0),
    ],
)
def test_retry_delay_follows_githubs_order(
    status: int, headers: dict[str, str], message: str, failures: int, delay: float | None
) -> None:
    found = retry_delay(status, headers, failures=failures, now_epoch_s=1100.0, message=message)
    assert found == delay


@pytest.mark.parametrize(
    "message", ["Resource not accessible by integration", "Issue is locked", "Forbidden"]
)
def test_a_403_that_is_no_rate_limit_is_not_retried(message: str) -> None:
    assert not is_rate_limited(403, {"x-ratelimit-remaining": "4999"}, message)
    assert retry_delay(403, {}, failures=1, now_epoch_s=0.0, message=message) is None


def test_a_rate_limit_blocks_every_request_until_it_is_over() -> None:
    pacer = WritePacer()
    pacer.block(100.0, 30.0)
    assert pacer.blocked_s(110.0) == 20.0  # a read waits too
    assert pacer.wait_s(110.0) == 20.0
    pacer.block(111.0, 5.0)  # a shorter wait asked later never shortens the block
    assert pacer.blocked_s(129.0) == 1.0
    assert pacer.wait_s(130.0) == 0.0
