"""The hand-over between HTTP threads and the receiver's loop: wait for durable, time out, dedupe, bound."""

from __future__ import annotations

import select
import threading
import time

from kick_monitor.messages import StatusChange
from kick_monitor.webhook_intake import Intake


def change(message_id: str) -> StatusChange:
    return StatusChange(
        change_id=f"webhook:{message_id}", channel_id=None, status="online", source="webhook",
        event="livestream.status.updated", livestream_id=None, title=None, occurred_at=None,
        received_at=time.time(), received_mono=time.monotonic(), shard=-1, streamer_id=1,
    )


class Submission(threading.Thread):
    """One HTTP thread's submit(), run in the background; `result` once it returns."""

    def __init__(self, intake: Intake, item: StatusChange, timeout: float) -> None:
        super().__init__()
        self.result: list[bool | None] = []
        self.args_ = (intake, item, timeout)
        self.start()
        self.join(0.05)

    def run(self) -> None:
        intake, item, timeout = self.args_
        self.result.append(intake.submit(item, timeout))


def submit_in_thread(intake: Intake, item: StatusChange, timeout: float) -> Submission:
    return Submission(intake, item, timeout)


def test_a_submission_wakes_the_loop_and_returns_once_acknowledged() -> None:
    intake = Intake()
    sub = submit_in_thread(intake, change("a"), timeout=5)
    readable, _, _ = select.select([intake.wake_read], [], [], 2)
    assert readable, "the loop was not woken"
    taken = intake.take()
    assert [c.change_id for c in taken] == ["webhook:a"] and not sub.result  # still waiting
    assert intake.waiting == 1
    intake.acknowledged(tuple(taken))
    sub.join(2)
    assert sub.result == [True] and intake.waiting == 0
    assert intake.is_recent("webhook:a")
    assert intake.submit(change("a"), timeout=0.01) is True  # a re-delivery: answered at once, not queued again
    assert intake.take() == []
    intake.close()


def test_no_acknowledgement_in_time_is_false_and_releases_the_slot() -> None:
    intake = Intake()
    began = time.monotonic()
    assert intake.submit(change("b"), timeout=0.2) is False
    assert 0.15 < time.monotonic() - began < 2
    assert intake.waiting == 0
    intake.acknowledged(tuple(intake.take()))  # acknowledged later: remembered for Kick's retry
    assert intake.submit(change("b"), timeout=0.01) is True
    intake.close()


def test_concurrent_copies_of_one_message_are_all_released() -> None:
    intake = Intake()
    subs = [submit_in_thread(intake, change("c"), timeout=5) for _ in range(3)]
    time.sleep(0.1)
    taken = intake.take()
    assert len(taken) == 1  # one copy goes to the writer; the others wait for its acknowledgement
    intake.acknowledged(tuple(taken))
    for sub in subs:
        sub.join(2)
        assert sub.result == [True]
    intake.close()


def test_a_retry_of_a_delivery_still_in_flight_is_not_sent_again() -> None:
    intake = Intake(max_in_flight=1)
    assert intake.submit(change("e"), timeout=0.05) is False  # the writer is restarting: no ack in time
    assert len(intake.take()) == 1
    assert intake.submit(change("e"), timeout=0.05) is False  # Kick's retry: waits for the copy in flight
    assert intake.take() == []
    assert intake.submit(change("f"), timeout=0.05) is None  # in-flight bound reached: 503 at once
    intake.acknowledged((change("e"),))
    assert intake.submit(change("e"), timeout=0.05) is True
    intake.close()


def test_beyond_max_waiting_a_delivery_is_turned_away_at_once() -> None:
    intake = Intake(max_waiting=2)
    subs = [submit_in_thread(intake, change(f"d{i}"), timeout=5) for i in range(2)]
    time.sleep(0.1)
    assert intake.submit(change("d9"), timeout=5) is None
    intake.acknowledged(tuple(intake.take()))
    for sub in subs:
        sub.join(2)
        assert sub.result == [True]
    intake.close()
