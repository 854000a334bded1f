"""kick_monitor.change_plan: what a batch does, decided in Python (no database here).

The store tests (tests/integration/test_*_store.py) check the written rows; these check the
decisions themselves, with properties over random batches: the arrival order never matters,
the history is a chain of transitions, nothing older than the row applies, a webhook never
lowers the row's order.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kick_monitor.change_plan import (
    STALE_MARGIN,
    LastBroadcastNeeded,
    Plan,
    StreamerRow,
    last_broadcast_wanted,
    plan_batch,
)
from kick_monitor.messages import StatusChange

T0 = 1_790_000_000.0
TOLERANCE = 60.0


def row(status: str = "offline", *, generation: int = 1, seq: int = 10, livestream: int | None = 5,
        last_read: bool = True) -> StreamerRow:
    online = status == "online"
    return StreamerRow(
        1, "xqc", 668, status, generation, seq, round((T0 + 10_000) * 1e6), livestream if online else None, livestream,
        T0 - 100 if online else None, 7 if online else None, 7, T0 - 100, not online, True, last_read,
    )


def change(n: int, status: str, *, generation: int = 1, seq: int | None = None, livestream: int | None = None,
           source: str = "pusher", started: float | None = None) -> StatusChange:
    online = status == "online"
    return StatusChange(
        f"c{n}", 668, status, source, "e", livestream, None,  # type: ignore[arg-type]
        (T0 + n if started is None else started) if online else None, T0 + n, 0.0, 0,
        generation, 100 + n if seq is None else seq, 1,
    )


def statuses(plan: Plan) -> list[tuple[object, object, object]]:
    return [(h["p"], h["s"], h.get("f", False)) for h in plan.history]


def test_a_batch_is_decided_in_generation_and_seq_order_whatever_the_arrival_order() -> None:
    batch = [
        change(3, "online", livestream=12), change(1, "online", livestream=11), change(2, "offline", livestream=11),
    ]
    plan = plan_batch(batch, {1: row()}, TOLERANCE)
    assert statuses(plan) == [("offline", "online", False), ("online", "offline", False), ("offline", "online", False)]
    [update] = plan.rows
    assert (update["s"], update["g"], update["q"], update["l"]) == ("online", 1, 103, 12)


def test_changes_not_newer_than_the_row_do_nothing() -> None:
    plan = plan_batch([change(1, "online", seq=10), change(2, "online", generation=0, seq=99)], {1: row()}, TOLERANCE)
    assert plan.history == [] and plan.rows == []


def test_an_end_naming_a_livestream_after_one_naming_none_asks_for_the_last_broadcast() -> None:
    batch = [change(1, "offline", source="api"), change(2, "offline", livestream=31)]
    with pytest.raises(LastBroadcastNeeded) as raised:
        plan_batch(batch, {1: row("online", last_read=False)}, TOLERANCE)
    assert raised.value.streamer_ids == {1}
    plan = plan_batch(batch, {1: row("online")}, TOLERANCE)  # read with it: the unseen broadcast's start
    assert statuses(plan) == [("online", "offline", False), ("offline", "online", True), ("online", "offline", False)]


# -- API verdicts against webhooks (issue 16): one asked before a webhook changed the row is stale -------
WEBHOOK_AT = T0 + 50  # a webhook ended the broadcast started at T0, arriving then


def after_webhook_end(**fields: Any) -> StreamerRow:
    """Offline: a webhook ended the latest broadcast (started T0) at WEBHOOK_AT; the last worker change before."""
    ended = replace(row("offline"), last_started_at=T0, last_ended_at=T0 + 49, last_webhook_at=WEBHOOK_AT,
                    last_event_us=round((T0 - 10) * 1e6))
    return replace(ended, **fields)


def verdict(n: int, status: str, asked: float | None, started: float = T0) -> StatusChange:
    return replace(change(n, status, source="api", started=started), asked_at=asked)


@pytest.mark.parametrize(("state", "asked", "started", "applies"), [
    ({}, WEBHOOK_AT - 0.3, T0, False),  # read "live" just before the webhook's end: the ended broadcast back
    ({}, WEBHOOK_AT + STALE_MARGIN + 0.1, T0, True),  # asked after it: decides as before
    ({}, None, T0, True),  # no asking time (spooled by an older release): as before
    ({}, WEBHOOK_AT - 0.3, T0 + TOLERANCE + 5, True),  # a later broadcast: news no webhook undid
    ({"last_event_us": round((WEBHOOK_AT + 1) * 1e6)}, WEBHOOK_AT - 0.3, T0, True),  # a worker change came after
    ({"last_webhook_at": None}, WEBHOOK_AT - 0.3, T0, True),  # no webhook was first about that broadcast
])
def test_an_api_verdict_asked_before_a_webhook_changed_the_row_is_dropped(
    state: dict[str, Any], asked: float | None, started: float, applies: bool,
) -> None:
    plan = plan_batch([verdict(60, "online", asked, started)], {1: after_webhook_end(**state)}, TOLERANCE)
    assert statuses(plan) == ([("offline", "online", False)] if applies else [])
    assert bool(plan.rows) == applies  # a stale verdict does not even move the row's order


def test_a_stale_end_is_dropped_in_a_batch_and_the_next_verdict_decides() -> None:
    started_by_webhook = replace(row("online"), last_started_at=T0, last_ended=False, last_webhook_at=WEBHOOK_AT,
                                 last_event_us=round((T0 - 10) * 1e6))
    batch = [verdict(60, "offline", WEBHOOK_AT - 0.3), change(61, "online", livestream=5)]
    plan = plan_batch(batch, {1: started_by_webhook}, TOLERANCE)
    assert statuses(plan) == [] and plan.rows[0]["q"] == 161  # the Pusher frame still moves the order
    plan = plan_batch([verdict(70, "offline", WEBHOOK_AT + 5)], {1: started_by_webhook}, TOLERANCE)
    assert statuses(plan) == [("online", "offline", False)]


def test_rows_with_a_timed_api_verdict_are_read_with_their_latest_broadcast() -> None:
    assert last_broadcast_wanted([verdict(1, "online", T0), change(2, "online")]) == (set(), [1])
    assert last_broadcast_wanted([verdict(1, "online", None)]) == (set(), [])


# -- properties over random batches ---------------------------------------------------------------
steps = st.lists(
    st.tuples(
        st.sampled_from(["online", "offline"]),
        st.integers(min_value=0, max_value=3),  # livestream id (0: none, as the API sends)
        st.integers(min_value=0, max_value=2),  # generation (0: a change without an order)
        st.booleans(),  # a webhook
    ),
    min_size=1, max_size=12,
)


def batch_of(spec: list[tuple[str, int, int, bool]]) -> list[StatusChange]:
    made = []
    for n, (status, livestream, generation, is_webhook) in enumerate(spec):
        if is_webhook:
            started = T0 + 1000 * livestream
            made.append(StatusChange(
                f"webhook:{n}", None, status, "webhook", "livestream.status.updated",  # type: ignore[arg-type]
                None, None, started if status == "online" else started + 500, T0 + 5000 + n, 0.0, 0, 0, 0, 1,
                None, started,
            ))
        else:
            made.append(change(n, status, generation=generation, livestream=livestream or None,
                               started=T0 + 1000 * livestream))
    return made


def comparable(plan: Plan) -> tuple[object, ...]:
    history = sorted((h["g"], h["q"], h["r"], h["i"], h["p"], h["s"]) for h in plan.history)
    return tuple(history), tuple(sorted(tuple(sorted(r.items())) for r in plan.rows))


@settings(max_examples=200, deadline=None)
@given(spec=steps, start=st.sampled_from(["online", "offline", "unknown"]), seed=st.integers(0, 2**32))
def test_the_arrival_order_of_a_batch_does_not_matter(
    spec: list[tuple[str, int, int, bool]], start: str, seed: int
) -> None:
    batch = batch_of(spec)
    shuffled = batch[:]
    random.Random(seed).shuffle(shuffled)
    assert comparable(plan_batch(batch, {1: row(start)}, TOLERANCE)) == \
        comparable(plan_batch(shuffled, {1: row(start)}, TOLERANCE))


@settings(max_examples=300, deadline=None)
@given(spec=steps, start=st.sampled_from(["online", "offline", "unknown"]))
def test_history_is_a_chain_and_the_order_never_goes_down(spec: list[tuple[str, int, int, bool]], start: str) -> None:
    state = row(start)
    plan = plan_batch(batch_of(spec), {1: state}, TOLERANCE)
    ordered = plan.history  # the plan's order is the written one (ids break ties in the documented order)
    previous = start
    for record in ordered:
        assert record["p"] == previous or (record["p"] == "offline" and previous in ("unknown", "offline")), ordered
        assert record["s"] != record["p"]
        previous = str(record["s"])
    for update in plan.rows:
        assert (update["g"], update["q"]) >= (state.generation, state.seq)
        if ordered:
            assert update["s"] == previous


def test_an_online_naming_the_last_ended_livestream_does_not_name_an_api_started_broadcast() -> None:
    """Soak r4: the API started a broadcast (no livestream id; the row's last, ended one was 5); a
    worker's confirm then said online(5). Named 5, the broadcast's real end offline(6) became an
    inferred end of 5 (recorded twice) plus an inferred start of 6."""
    api_started = replace(row("online"), livestream_id=None, last_livestream_id=5)
    confirm = replace(change(1, "online", livestream=5, source="api"), occurred_at=None)
    plan = plan_batch([confirm, change(2, "offline", livestream=6)], {1: api_started}, TOLERANCE)
    assert [h.get("l") for h in plan.history] == [6]
    assert statuses(plan) == [("online", "offline", False)]
    alone = plan_batch([confirm], {1: api_started}, TOLERANCE)
    assert "l" not in alone.rows[0] and alone.history == []
