"""MessageTrack.expire with the queue's sending times (DN-9: the timeout counts from the send)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hisp.core.tracking import Event, MessageTrack, State

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _track() -> MessageTrack:
    return MessageTrack.start("<m@x>", ["a@peer.example", "b@peer.example"], at=T0, reliable=False)


def test_without_queue_knowledge_everything_incomplete_times_out_at_the_deadline() -> None:
    track = _track()
    assert track.expire(T0 + HOUR - timedelta(seconds=1)) == []
    assert [a for a, _ in track.expire(T0 + HOUR)] == ["a@peer.example", "b@peer.example"]


def test_a_recipient_still_queued_never_times_out_and_the_deadline_moves_on() -> None:
    track = _track()
    at = T0 + HOUR
    expired = track.expire(at, {"a@peer.example": None})
    assert [a for a, _ in expired] == ["b@peer.example"]
    assert track.recipients["a@peer.example"].state is State.SENT
    assert track.deadline == at + HOUR and not track.complete


def test_a_late_relay_is_given_its_whole_timeout() -> None:
    track = _track()
    relayed = T0 + timedelta(minutes=50)
    at = T0 + HOUR
    assert track.expire(at, {"a@peer.example": relayed, "b@peer.example": relayed}) == []
    assert track.deadline == relayed + HOUR
    assert track.expire(relayed + HOUR - timedelta(seconds=1), {"a@peer.example": relayed}) == []
    expired = track.expire(relayed + HOUR, {"a@peer.example": relayed, "b@peer.example": relayed})
    assert [(a, t.status) for a, t in expired] == [("a@peer.example", "5.4.71"), ("b@peer.example", "5.4.71")]
    assert track.complete


def test_the_rearmed_deadline_is_never_earlier_than_the_submissions() -> None:
    track = _track()
    track.rearmed_until = T0  # as loaded from a row written before the timeout could move it
    assert track.deadline == T0 + HOUR


def test_a_recipient_heard_of_is_due_even_if_the_queue_still_lists_it() -> None:
    """A processed MDN proves the message left; a queue row that lags (a crash between the peer's 250 and its
    record) does not hold the timer back."""
    track = MessageTrack.start("<m@x>", ["a@peer.example"], at=T0, reliable=True)
    track.apply("a@peer.example", Event.PROCESSED, T0 + timedelta(minutes=1))
    expired = track.expire(T0 + HOUR, {"a@peer.example": None})
    assert [(a, t.status) for a, t in expired] == [("a@peer.example", "5.4.72")]
