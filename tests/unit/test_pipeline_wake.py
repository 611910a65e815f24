"""Pipeline.wake wakes one idle worker, not all of them; a wake during a claim is not lost; stop ends them all; a
worker whose claim took less than its limit sleeps without an empty claim, one whose claim was full claims again.

The queue is a counting stand-in (its claim finds nothing, or the batches it was given); the other ports are never
reached by idle workers, and a worker with jobs fails them at the store (their leases would bring them back).
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

from hisp.errors import StorageError
from hisp.pipeline import CLAIM_LIMIT, Pipeline
from hisp.ports import Direction, Job

POLL = 60.0  # so long that any claim seen within a test came from a wake, not from the poll


class CountingQueue:
    def __init__(self) -> None:
        self.claims = 0
        self.gate: threading.Event | None = None  # when set, a claim waits for it (a claim in progress)
        self.entered = threading.Event()

    def claim(self, node: str, now: datetime, lease_seconds: float, limit: int) -> list[Any]:
        self.claims += 1
        if self.gate is not None:
            self.entered.set()
            self.gate.wait(10)
        return []


class FeedingQueue(CountingQueue):
    """Hands out the given batches of jobs, one per claim, then nothing."""

    def __init__(self, *batches: int) -> None:
        super().__init__()
        self.batches = list(batches)

    def claim(self, node: str, now: datetime, lease_seconds: float, limit: int) -> list[Any]:
        self.claims += 1
        count = min(self.batches.pop(0), limit) if self.batches else 0
        return [_job(self.claims * 100 + i) for i in range(count)]


class FailingStore:
    def raw(self, message_id: str) -> bytes:
        raise StorageError(f"no message {message_id} (stand-in)")


def _job(recipient_id: int) -> Job:
    at = datetime(2026, 11, 30, tzinfo=UTC)
    return Job(
        recipient_id=recipient_id, message_id=f"m{recipient_id}", address=f"r{recipient_id}@hospital.example",
        direction=Direction.OUTGOING, mail_from="a@clinic.example", received_at=at, attempt=1, node="n1",
        claim_token="t", lease_until=at,
    )  # fmt: skip


def _pipeline(queue: CountingQueue, store: Any = None) -> Pipeline:
    unused: Any = object()
    return Pipeline(
        store=store or unused, queue=queue, audit=unused, agent=unused, hosting=unused, certificates=unused,
        relay=unused, edge=unused, node="n1", clock=lambda: datetime(2026, 11, 30, tzinfo=UTC),
    )  # fmt: skip


async def _settle(queue: CountingQueue, expected: int) -> None:
    for _ in range(200):
        if queue.claims >= expected:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # and nothing more comes


def test_one_wake_one_claim_and_stop_releases_every_worker() -> None:
    async def scenario() -> list[int]:
        queue = CountingQueue()
        pipeline = _pipeline(queue)
        stop = asyncio.Event()
        workers = asyncio.ensure_future(pipeline.run_workers(stop, workers=4, poll_interval=POLL))
        seen = []
        await _settle(queue, 4)  # each worker claims once, finds nothing, waits
        seen.append(queue.claims)
        pipeline.wake()
        await _settle(queue, 5)
        seen.append(queue.claims)
        for _ in range(3):
            pipeline.wake()
        await _settle(queue, 8)
        seen.append(queue.claims)
        stop.set()
        await asyncio.wait_for(workers, 5)  # all four return at once, not after the poll interval
        return seen

    assert asyncio.run(scenario()) == [4, 5, 8]


def test_a_wake_during_a_claim_makes_the_worker_claim_again() -> None:
    async def scenario() -> int:
        queue = CountingQueue()
        pipeline = _pipeline(queue)
        stop = asyncio.Event()
        queue.gate = threading.Event()
        workers = asyncio.ensure_future(pipeline.run_workers(stop, workers=1, poll_interval=POLL))
        await asyncio.get_running_loop().run_in_executor(None, queue.entered.wait, 5)
        pipeline.wake()  # nobody is idle: the one worker is inside its claim
        queue.gate.set()
        await _settle(queue, 2)
        claims = queue.claims
        stop.set()
        await asyncio.wait_for(workers, 5)
        return claims

    assert asyncio.run(scenario()) == 2


def _claims_after(queue: FeedingQueue, expected: int) -> int:
    async def scenario() -> int:
        pipeline = _pipeline(queue, FailingStore())
        stop = asyncio.Event()
        workers = asyncio.ensure_future(pipeline.run_workers(stop, workers=1, poll_interval=POLL))
        await _settle(queue, expected)
        claims = queue.claims
        stop.set()
        await asyncio.wait_for(workers, 5)
        return claims

    return asyncio.run(scenario())


def test_a_claim_under_its_limit_is_not_followed_by_an_empty_one() -> None:
    # it took everything due; anything enqueued since comes with a wake
    assert _claims_after(FeedingQueue(3), 1) == 1


def test_a_full_claim_is_followed_by_another() -> None:
    assert _claims_after(FeedingQueue(CLAIM_LIMIT, CLAIM_LIMIT, 2), 3) == 3
