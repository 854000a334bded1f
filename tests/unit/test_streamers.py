"""The streamer repository on a real PostgreSQL: validation, CRUD, import, status summary."""

from __future__ import annotations

from typing import TypeAlias

import psycopg2.extensions
import pytest

from kick_monitor import streamers
from kick_monitor.streamers import (
    WAITING_FOR_RESOLUTION,
    ImportReport,
    StreamerError,
    add_streamer,
    import_streamers,
    is_header,
    list_streamers,
    load_monitorable,
    remove_streamer,
    status_summary,
    validate_id,
    validate_slug,
)

Conn: TypeAlias = psycopg2.extensions.connection


def usernames(conn: Conn) -> list[str]:
    return [s.username for s in list_streamers(conn)]


@pytest.mark.parametrize(
    ("slug", "expected"),
    [("xQc", "xqc"), ("  trainwreckstv ", "trainwreckstv"), ("a_b-c9", "a_b-c9"), ("x" * 64, "x" * 64)],
)
def test_valid_slugs_are_lower_cased(slug: str, expected: str) -> None:
    assert validate_slug(slug) == expected


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("", "slug is empty"),
        ("   ", "slug is empty"),
        ("x" * 65, "longer than 64 characters"),
        ("bad slug", "slug 'bad slug' may only contain letters, digits, '_' and '-'"),
        ("dröge", "may only contain"),
        ("a;drop table", "may only contain"),
        ("a\x1b[31m", r"'a\x1b[31m' may only contain"),
        (5, "slug must be text, got int"),
        (None, "slug must be text, got NoneType"),
    ],
)
def test_bad_slugs_are_named(slug: object, message: str) -> None:
    with pytest.raises(StreamerError) as caught:
        validate_slug(slug)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 1), ("42", 42), (" 7 ", 7), (None, None), ("", None), (2**63 - 1, 2**63 - 1)]
)
def test_valid_ids(value: object, expected: int | None) -> None:
    assert validate_id(value, "channel_id") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "channel id must be a positive integer below 2^63, got 0"),
        (-3, "got -3"),
        (2**63, "below 2^63"),
        ("-3", "channel id must be a positive integer, got '-3'"),
        ("1.5", "got '1.5'"),
        ("12abc", "got '12abc'"),
        ("١٢", "got '١٢'"),  # Arabic-Indic digits are digits to str.isdigit, not to us
        (1.0, "channel id must be a positive integer, got float"),
        (True, "got bool"),
        ([1], "got list"),
    ],
)
def test_bad_ids_are_refused(value: object, message: str) -> None:
    with pytest.raises(StreamerError) as caught:
        validate_id(value, "channel_id")
    assert message in str(caught.value)


def test_add_list_remove(db_conn: Conn) -> None:
    added = add_streamer(db_conn, "Alice", channel_id=11, user_id="21", chatroom_id=31)
    assert (added.username, added.channel_id, added.kick_user_id, added.chatroom_id) == ("alice", 11, 21, 31)
    assert added.status == "unknown" and added.unresolved_reason is None and added.is_resolved
    bob = add_streamer(db_conn, "bob")
    assert bob.channel_id is None and bob.unresolved_reason == WAITING_FOR_RESOLUTION
    assert usernames(db_conn) == ["alice", "bob"]
    assert remove_streamer(db_conn, "ALICE") is True
    assert remove_streamer(db_conn, "alice") is False
    assert usernames(db_conn) == ["bob"]


@pytest.mark.parametrize(
    ("slug", "ids", "message"),
    [
        ("ALICE", {}, "streamer 'alice' already exists"),
        ("carol", {"channel_id": 11}, "channel id 11 already belongs to streamer 'alice'"),
        ("carol", {"user_id": 21}, "user id 21 already belongs to streamer 'alice'"),
    ],
)
def test_duplicates_are_refused_and_nothing_is_written(
    db_conn: Conn, slug: str, ids: dict[str, int], message: str
) -> None:
    add_streamer(db_conn, "alice", channel_id=11, user_id=21)
    with pytest.raises(StreamerError) as caught:
        add_streamer(db_conn, slug, **ids)
    assert str(caught.value) == message
    assert usernames(db_conn) == ["alice"]
    assert db_conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_bad_input_never_reaches_the_database(db_conn: Conn) -> None:
    with pytest.raises(StreamerError, match="channel id must be a positive integer"):
        add_streamer(db_conn, "alice", channel_id="12; DROP TABLE x")
    with pytest.raises(StreamerError, match="may only contain"):
        add_streamer(db_conn, "alice'--")
    assert usernames(db_conn) == []


IMPORT_FILE = """\
slug,channel_id,user_id,chatroom_id
# a comment line
alice,101,201,301
bob
  Carol , 103 ,, # trailing comment
bad slug
dave,not-a-number
erin,101
alice
frank,104,205,305,extra
,107
gina,0

hank,106
"""


def test_import_keeps_good_lines_and_reports_bad_ones_by_number(db_conn: Conn) -> None:
    report = import_streamers(db_conn, IMPORT_FILE.splitlines(keepends=True))
    assert usernames(db_conn) == ["alice", "bob", "carol", "hank"]
    assert report.added == 4 and report.already_present == 0 and report.lines == 14
    assert [(bad.number, bad.reason) for bad in report.bad_lines] == [
        (6, "slug 'bad slug' may only contain letters, digits, '_' and '-'"),
        (7, "channel id must be a positive integer, got 'not-a-number'"),
        (8, "channel id 101 repeats line 3"),
        (9, "streamer 'alice' repeats line 3"),
        (10, "expected at most 4 fields (slug,channel_id,user_id,chatroom_id)"),
        (11, "slug is empty"),
        (12, "channel id must be a positive integer below 2^63, got 0"),
    ]
    carol = next(s for s in list_streamers(db_conn) if s.username == "carol")
    assert (carol.channel_id, carol.kick_user_id, carol.chatroom_id) == (103, None, None)
    bob = next(s for s in list_streamers(db_conn) if s.username == "bob")
    assert bob.unresolved_reason == WAITING_FOR_RESOLUTION


def test_reimport_is_harmless_and_conflicts_are_explained(db_conn: Conn) -> None:
    first = import_streamers(db_conn, ["alice,101,201\n", "bob\n"])
    assert first.added == 2
    again = import_streamers(db_conn, ["alice,101\n", "bob\n", "new\n"])
    assert again.added == 1 and again.already_present == 2 and again.bad_lines == []
    clashing = import_streamers(db_conn, ["alice2,101\n", "bob2,,201\n", "bob,555\n", "alice,,999\n"])
    assert clashing.added == 0 and clashing.already_present == 0
    assert [(bad.number, bad.reason) for bad in clashing.bad_lines] == [
        (1, "channel id 101 already belongs to streamer 'alice'"),
        (2, "user id 201 already belongs to streamer 'alice'"),
        (
            3,
            "streamer 'bob' already exists with channel id none, not 555 (remove it first to change its ids)",
        ),
        (4, "streamer 'alice' already exists with user id 201, not 999 (remove it first to change its ids)"),
    ]
    assert usernames(db_conn) == ["alice", "bob", "new"]


def test_import_without_a_header_and_in_chunks(db_conn: Conn) -> None:
    lines = [f"streamer{i},{1000 + i}\n" for i in range(25)] + ["bad!\n"]
    seen: list[int] = []

    def progress(report: ImportReport) -> None:
        seen.append(report.added)

    report = import_streamers(db_conn, lines, chunk_size=10, progress=progress)
    assert report.added == 25 and [bad.number for bad in report.bad_lines] == [26]
    assert seen == [10, 20, 25]


# What LibreOffice and Excel write for "Save as CSV (UTF-8)": a byte-order mark, CRLF, quoted
# cells, a header in the sheet's own words, padding cells for empty columns, blank rows as commas.
SPREADSHEET = (
    '\ufeff"Slug","Channel ID","User ID","Chatroom ID"\r\n'
    '"xqc","668","676","668"\r\n'
    '"Adin_Ross",1069,,\r\n'
    ',,,\r\n'
    '"bad slug","3"\r\n'
    'trainwreckstv, "12",,,,\r\n'
)


def test_a_spreadsheet_export_imports_every_good_row(db_conn: Conn) -> None:
    report = import_streamers(db_conn, SPREADSHEET.splitlines(keepends=True))
    assert usernames(db_conn) == ["adin_ross", "trainwreckstv", "xqc"]
    assert report.added == 3 and report.lines == 6
    assert [(bad.number, bad.reason) for bad in report.bad_lines] == [
        (5, "slug 'bad slug' may only contain letters, digits, '_' and '-'"),
    ]
    xqc = next(s for s in list_streamers(db_conn) if s.username == "xqc")
    assert (xqc.channel_id, xqc.kick_user_id, xqc.chatroom_id) == (668, 676, 668)


@pytest.mark.parametrize(
    ("header", "is_one"),
    [
        ("slug", True),
        ('"username","channel_id"', True),
        ("Slug,Channel ID,User ID", True),
        ("\ufeffslug", False),  # the reader strips a BOM before this point; left on, it is a slug cell
        ("xqc,668", False),
        (",,,", False),
    ],
)
def test_header_detection(header: str, is_one: bool) -> None:
    assert is_header(header) is is_one


def test_bad_header_is_a_bad_line(db_conn: Conn) -> None:
    report = import_streamers(db_conn, ["slug,user_id\n", "alice\n"])
    assert [(bad.number, bad.reason) for bad in report.bad_lines] == [
        (1, "header must be slug,channel_id,user_id,chatroom_id (trailing ones optional)")
    ]
    assert usernames(db_conn) == ["alice"]


def test_status_summary_counts(db_conn: Conn) -> None:
    for slug, channel_id in (("on1", 1), ("on2", 2), ("off", 3), ("unk", 4), ("unres", None)):
        add_streamer(db_conn, slug, channel_id=channel_id)
    add_streamer(db_conn, "apionly", user_id=77)  # monitored, without Pusher
    with db_conn, db_conn.cursor() as cur:
        cur.execute(
            """UPDATE kick_monitor.streamers SET status = 'online', stream_title = 'hi',
                      last_status_change = now() - interval '5 minutes'
               WHERE username IN ('on1', 'on2')"""
        )
        cur.execute("UPDATE kick_monitor.streamers SET status = 'offline' WHERE username = 'off'")
    summary = status_summary(db_conn)
    assert summary.counts() == {"online": 2, "offline": 1, "unknown": 2, "unresolved": 1, "total": 6,
                                "without_pusher": 1}
    on1 = next(s for s in summary.streamers if s.username == "on1")
    assert on1.since_seconds is not None and 299 < on1.since_seconds < 400


@pytest.mark.parametrize("autocommit", [False, True], ids=["server-side cursor", "autocommit"])
def test_load_in_chunks_gives_back_the_held_ref_of_every_unchanged_row(
    db_conn: Conn, monkeypatch: pytest.MonkeyPatch, autocommit: bool,
) -> None:
    """The planner's reload at 100k streamers: unchanged rows reuse the held object (no heap churn), any
    changed field or a streamer not held gives a fresh one; chunks smaller than the list lose no row."""
    monkeypatch.setattr(streamers, "LOAD_CHUNK", 3)
    for index in range(1, 9):
        add_streamer(db_conn, f"s{index}", channel_id=100 + index, user_id=200 + index)
    add_streamer(db_conn, "waiting")  # no ids: not monitorable
    db_conn.autocommit = autocommit
    first = load_monitorable(db_conn)
    assert [ref.username for ref in first] == [f"s{index}" for index in range(1, 9)]
    held = {ref.streamer_id: ref for ref in first[:6]}  # s7 and s8 are not held
    with db_conn.cursor() as cur:
        cur.execute("UPDATE kick_monitor.streamers SET status = 'online', livestream_id = 5,"
                    " stream_started_at = now() WHERE username = 's2'")
        cur.execute("UPDATE kick_monitor.streamers SET channel_id = 999 WHERE username = 's4'")
    if not autocommit:
        db_conn.commit()
    second = load_monitorable(db_conn, held.get)
    assert [ref.username for ref in second] == [ref.username for ref in first]
    reused = {ref.username for ref in second if held.get(ref.streamer_id) is ref}
    assert reused == {"s1", "s3", "s5", "s6"}
    changed = {ref.username: ref for ref in second}
    assert (changed["s2"].status, changed["s2"].livestream_id) == ("online", 5) and changed["s2"].started_at
    assert changed["s4"].channel_id == 999
    assert db_conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
