"""The streamer source's pure parts: validating its rows and planning the sync."""

from __future__ import annotations

import pytest

from kick_monitor.source_sync import Current, SourceError, plan_sync, validate_rows
from kick_monitor.status_mirror import PARAMETERS, MirrorRow, sample_parameters
from kick_monitor.streamers import NewStreamer


def test_rows_with_slug_only_and_with_ids() -> None:
    assert validate_rows(["slug"], [("XQC",), (" amouranth ",)]) == [NewStreamer("xqc"), NewStreamer("amouranth")]
    got = validate_rows(["user_id", "slug", "channel_id", "extra"], [(676, "xqc", 668, "ignored")])
    assert got == [NewStreamer("xqc", 668, 676)]


def test_ids_may_be_null_or_digit_strings() -> None:
    assert validate_rows(["slug", "channel_id"], [("a", None), ("b", "42")]) == [NewStreamer("a"), NewStreamer("b", 42)]


def test_a_query_without_a_slug_column_is_refused_naming_its_columns() -> None:
    with pytest.raises(SourceError, match=r"column named slug \(it returned: kick_username, active\)"):
        validate_rows(["kick_username", "active"], [])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("ok",), ("Bad Slug!",)], r"row 2 \(slug='Bad Slug!'\): slug 'Bad Slug!' may only contain"),
        ([("ok",), (None,)], r"row 2 \(slug=None\): slug is NULL"),
        ([("a",), ("b",), ("A",)], r"row 3 \(slug='A'\): slug 'a' repeats row 1"),
        ([("a", 5), ("b", 5)], r"row 2 .*channel id 5 repeats row 1"),
        ([("a", -1)], r"row 1 .*channel id must be a positive integer"),
        ([("a", 1.5)], r"row 1 .*channel id must be a positive integer, got float"),
    ],
)
def test_a_bad_row_is_named_and_nothing_is_returned(rows: list[tuple[object, ...]], message: str) -> None:
    columns = ["slug", "channel_id"][: len(rows[0])]
    with pytest.raises(SourceError, match=message) as caught:
        validate_rows(columns, rows)
    assert "the list is left as it was" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_many_bad_rows_are_counted_and_only_the_first_shown() -> None:
    with pytest.raises(SourceError) as caught:
        validate_rows(["slug"], [(f"bad slug {n}",) for n in range(10)])
    text = str(caught.value)
    assert "10 of 10 rows are bad" in text and "(and 7 more bad rows)" in text
    assert "row 4 " not in text


def test_plan_adds_removes_and_fills_ids() -> None:
    current = [Current("keep", 1, 11), Current("gone", 2, 12), Current("noids", None, None), Current("moved", 3, 13)]
    wanted = [NewStreamer("keep", 1, 11), NewStreamer("noids", 4, 14), NewStreamer("moved"),
              NewStreamer("new", 5, None), NewStreamer("fresh")]
    plan = plan_sync(wanted, current)
    assert [n.username for n in plan.add] == ["new", "fresh"]
    assert plan.remove == ["gone"]
    assert plan.set_ids == [NewStreamer("noids", 4, 14)]  # a source without ids never erases ours
    assert plan.summary() == "+2 -1 ids 1"


def test_plan_of_an_equal_list_is_empty_and_an_empty_source_removes_everything() -> None:
    current = [Current("a", 1, None), Current("b", None, None)]
    assert not plan_sync([NewStreamer("a", 1), NewStreamer("b")], current)
    assert plan_sync([], current).remove == ["a", "b"]


def test_plan_follows_a_changed_channel_id() -> None:
    plan = plan_sync([NewStreamer("a", 9, 1)], [Current("a", 1, 1)])
    assert plan.set_ids == [NewStreamer("a", 9, 1)] and not plan.add and not plan.remove


def test_mirror_parameters_are_the_current_state() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, tzinfo=UTC)
    online = MirrorRow(1, "xqc", 676, 668, "online", "just chatting", at, at).parameters()
    assert online == {"slug": "xqc", "user_id": 676, "channel_id": 668, "status": "online", "is_live": True,
                      "title": "just chatting", "started_at": at, "changed_at": at}
    offline = MirrorRow(1, "xqc", 676, 668, "offline", "old title", at, at).parameters()
    assert offline["is_live"] is False and offline["title"] is None and offline["started_at"] is None
    assert set(sample_parameters()) == set(PARAMETERS)
