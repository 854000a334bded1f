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


# -- Pusher changes of an earlier lease (issue 17): placed by their broadcast, never thrown away -----
def old(n: int, status: str, *, livestream: int | None = 5, started: float | None = None) -> StatusChange:
    """A Pusher change the previous owner of the shard spooled (generation 1; the row is at 2)."""
    return change(n, status, generation=1, livestream=livestream, started=started)


def seen(plan: Plan) -> list[dict[str, object]]:
    return [span.record() for span in plan.spans if span.start_seen or span.end_seen]


def test_an_old_lease_start_of_the_open_broadcast_records_its_pusher_seen_time_only() -> None:
    plan = plan_batch([old(1, "online", started=T0 - 100)], {1: row("online", generation=2)}, TOLERANCE)
    assert plan.history == []
    [update] = plan.rows
    assert (update["s"], update["g"], update["q"]) == ("online", 2, 10)  # never backwards
    [span] = seen(plan)
    assert span["f"] == 7 and span["ps"] == T0 + 1


def test_an_old_lease_start_of_an_ended_broadcast_is_its_seen_time_without_reading_the_broadcast() -> None:
    unread = replace(row("offline", generation=2, last_read=False), last_id=None, last_started_at=None,
                     last_ended=None, last_has_livestream=None)  # as read_rows gives it: no latest broadcast
    plan = plan_batch([old(1, "online", started=T0 - 100)], {1: unread}, TOLERANCE)
    assert plan.history == []
    [span] = seen(plan)
    assert (span["l"], span["ps"], span.get("n")) == (5, T0 + 1, None)  # matched by livestream id, never inserted
    assert plan.rows[0]["s"] == "offline"


def test_an_old_lease_end_of_the_open_broadcast_ends_it_once() -> None:
    plan = plan_batch([old(1, "offline")], {1: row("online", generation=2)}, TOLERANCE)
    assert statuses(plan) == [("online", "offline", False)]
    assert (plan.history[0]["g"], plan.history[0]["q"]) == (2, 11)  # one seq above the row's: after its history
    assert (plan.rows[0]["s"], plan.rows[0]["g"], plan.rows[0]["q"]) == ("offline", 2, 11)
    again = plan_batch([old(1, "offline")], {1: row("offline", generation=2)}, TOLERANCE)
    assert again.history == [] and seen(again)[0]["pe"] == T0 + 1  # the end already recorded: its seen time


def test_an_old_lease_broadcast_later_than_the_rows_starts_and_ends_it() -> None:
    batch = [old(1, "online", livestream=9, started=T0 + 50), old(2, "offline", livestream=9)]
    plan = plan_batch(batch, {1: row("offline", generation=2)}, TOLERANCE)
    assert statuses(plan) == [("offline", "online", False), ("online", "offline", False)]
    assert {(h["g"], h["q"]) for h in plan.history} == {(2, 11)}
    assert (plan.rows[0]["s"], plan.rows[0]["ll"]) == ("offline", 9)


def test_an_old_lease_start_while_the_new_owner_watches_a_later_broadcast_is_only_seen() -> None:
    state = row("online", generation=2)  # broadcast 5, started T0 - 100
    plan = plan_batch([old(1, "online", livestream=4, started=T0 - 900), old(2, "offline", livestream=None)],
                      {1: state}, TOLERANCE)
    assert plan.history == []  # an earlier broadcast; an end naming none never ends the open one
    assert plan.rows[0]["s"] == "online"


def test_an_old_lease_change_asks_for_the_latest_broadcast_when_the_row_names_none() -> None:
    state = row("offline", generation=2, livestream=None, last_read=False)
    with pytest.raises(LastBroadcastNeeded) as raised:
        plan_batch([old(1, "online", livestream=9)], {1: state}, TOLERANCE)
    assert raised.value.streamer_ids == {1}


@settings(max_examples=300, deadline=None)
@given(spec=steps, start=st.sampled_from(["online", "offline", "unknown"]), seed=st.integers(0, 2**32))
def test_old_lease_changes_keep_the_chain_and_the_order_and_do_not_depend_on_arrival(
    spec: list[tuple[str, int, int, bool]], start: str, seed: int,
) -> None:
    """The row at generation 2: every generation-1 change is an earlier lease's."""
    state = row(start, generation=2)
    batch = batch_of(spec)
    plan = plan_batch(batch, {1: state}, TOLERANCE)
    previous = start
    for record in plan.history:
        assert record["p"] == previous or (record["p"] == "offline" and previous in ("unknown", "offline"))
        assert record["s"] != record["p"]
        previous = str(record["s"])
    for update in plan.rows:
        assert (update["g"], update["q"]) >= (state.generation, state.seq)
        if plan.history:
            assert update["s"] == previous
    shuffled = batch[:]
    random.Random(seed).shuffle(shuffled)
    assert comparable(plan_batch(shuffled, {1: row(start, generation=2)}, TOLERANCE)) == comparable(plan)


def test_an_old_lease_start_never_leaves_an_offline_row_online() -> None:
    """The new owner's offline was observed after the old owner's start (a later generation is handed
    out only after the lease moved): that broadcast had ended by then — started, inferred end."""
    plan = plan_batch([old(1, "online", livestream=9, started=T0 + 50)], {1: row("offline", generation=2)}, TOLERANCE)
    assert statuses(plan) == [("offline", "online", False), ("online", "offline", True)]
    [update] = plan.rows
    assert (update["s"], update["g"], update["q"], update["ll"]) == ("offline", 2, 11, 9)
    assert "ch" not in update  # the row's status did not change: neither does its last change time
    assert plan.history[1]["a"] == T0 + 10_000  # ended by the row's last event, the new owner's observation


def test_an_old_generation_start_read_after_the_rows_last_event_is_news() -> None:
    """A paused node's buffered frame, read when it woke (after the new owner's last event): the
    broadcast opens, as the new owner will (or did) see it too; no inferred end."""
    late = change(20_000, "online", generation=1, livestream=9, started=T0 + 19_990)
    plan = plan_batch([late], {1: row("offline", generation=2)}, TOLERANCE)
    assert statuses(plan) == [("offline", "online", False)]
    assert (plan.rows[0]["s"], plan.rows[0]["g"], plan.rows[0]["q"], plan.rows[0]["l"]) == ("online", 2, 11, 9)
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


def test_an_old_lease_end_seen_before_an_api_started_broadcast_began_does_not_end_it() -> None:
    """Cluster test (PostgreSQL down longer than the TTL): the new owner's API verdict opened a
    broadcast (no livestream id, Kick's start T0 - 100); the old owner's spooled end of livestream 9,
    seen at T0 - 200, was replayed after it and ended it — an end before the start is of an earlier
    broadcast. Seen after the start, it is this one's end, as before."""
    api_started = replace(row("online", generation=2), livestream_id=None)
    plan = plan_batch([old(-200, "offline", livestream=9)], {1: api_started}, TOLERANCE)
    assert plan.history == []
    assert plan.rows == [] or plan.rows[0]["s"] == "online"
    [span] = seen(plan)
    assert (span["l"], span["pe"]) == (9, T0 - 200)  # only its seen time, on the broadcast it names
    after = plan_batch([old(1, "offline", livestream=9)], {1: api_started}, TOLERANCE)
    assert statuses(after) == [("online", "offline", False)]


def test_a_confirm_naming_another_livestream_than_the_open_broadcast_only_touches_it() -> None:
    """Soak r5: a respawned worker's list said online(5) (the streamer's previous broadcast, ended
    since); the row had recorded broadcast 6. The API agreed the streamer is live and the worker
    confirmed online(5): that ended 6 (inferred) and started 5 a second time. Now a touch."""
    on_six = replace(row("online", generation=2), livestream_id=6, last_livestream_id=6)
    confirm = replace(change(1, "online", generation=2, livestream=5, source="api"), occurred_at=None)
    plan = plan_batch([confirm], {1: on_six}, TOLERANCE)
    assert plan.history == []
    assert plan.rows[0]["s"] == "online" and plan.rows[0].get("l") in (None, 6)
    verdict = change(2, "online", generation=2, livestream=7, source="api", started=T0 + 2)  # a start: news
    assert statuses(plan_batch([verdict], {1: on_six}, TOLERANCE)) == [("online", "offline", True),
                                                                       ("offline", "online", False)]
