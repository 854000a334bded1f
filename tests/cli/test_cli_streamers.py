"""`kick-monitor streamers add|remove|list|import` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.test_cli_basics import assert_one_error
from tests.conftest import CliRunner, clean_environment


def test_add_list_remove(cli: CliRunner) -> None:
    assert cli("streamers", "add", "Alice", "--channel-id", "11", "--user-id", "21", "--chatroom-id", "31") == (
        0,
        "added alice (channel id 11)\n",
        "",
    )
    code, out, err = cli("streamers", "add", "bob")
    assert code == 0 and "added bob (unresolved: waiting for id resolution" in out and err == ""
    code, out, _ = cli("streamers", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SLUG", "CHANNEL", "ID", "USER", "ID", "CHATROOM", "ID", "STATUS"]
    assert lines[1].split() == ["alice", "11", "21", "31", "unknown"]
    assert lines[2].split()[:5] == ["bob", "-", "-", "-", "unresolved"]
    code, out, _ = cli("streamers", "list", "--json")
    listed = json.loads(out)
    assert [(s["username"], s["channel_id"], s["unresolved_reason"]) for s in listed] == [
        ("alice", 11, None),
        ("bob", None, "waiting for id resolution"),
    ]
    assert cli("streamers", "remove", "ALICE") == (0, "removed alice\n", "")
    code, out, err = cli("streamers", "remove", "alice")
    assert code == 1 and out == ""
    assert_one_error(err, "no streamer named 'alice'")
    assert json.loads(cli("streamers", "list", "--json").stdout)[0]["username"] == "bob"


def test_empty_list(cli: CliRunner) -> None:
    assert cli("streamers", "list") == (
        0,
        "no streamers yet; add one with `kick-monitor streamers add SLUG`\n",
        "",
    )
    assert cli("streamers", "list", "--json") == (0, "[]\n", "")


def test_add_errors(run_main: CliRunner) -> None:
    assert run_main("streamers", "add", "alice", "--channel-id", "11").code == 0
    cases = [
        (["bad slug"], 2, "slug 'bad slug' may only contain letters, digits, '_' and '-'"),
        (["x" * 65], 2, "longer than 64 characters"),
        (["carol", "--channel-id", "1.5"], 2, "channel id must be a positive integer, got '1.5'"),
        (["carol", "--user-id", "-4"], 2, "user id must be a positive integer, got '-4'"),
        (["carol", "--chatroom-id", "0"], 2, "chatroom id must be a positive integer below 2^63, got 0"),
        (["alice"], 1, "streamer 'alice' already exists"),
        (["carol", "--channel-id", "11"], 1, "channel id 11 already belongs to streamer 'alice'"),
    ]
    for args, expected_code, message in cases:
        code, out, err = run_main("streamers", "add", *args)
        assert code == expected_code and out == "", (args, err)
        assert_one_error(err, message)
    assert [s["username"] for s in json.loads(run_main("streamers", "list", "--json").stdout)] == ["alice"]


def test_import_reports_bad_lines_and_keeps_good_ones(cli: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "streamers.csv"
    source.write_bytes(
        b"slug,channel_id,user_id,chatroom_id\n"
        b"# comment\n"
        b"alice,101,201,301\n"
        b"bob\n"
        b"bad slug\n"
        b"carol,abc\n"
        b"dave,101\n"
        b"caf\xe9\n"  # not UTF-8: this line alone is bad
        b"erin,105\r\n"
    )
    code, out, err = cli("streamers", "import", str(source))
    assert code == 1
    assert out == f"imported {source}: 3 added, 0 already present, 4 bad lines not imported\n"
    assert err.splitlines() == [
        f"{source}:5: slug 'bad slug' may only contain letters, digits, '_' and '-'",
        f"{source}:6: channel id must be a positive integer, got 'abc'",
        f"{source}:7: channel id 101 repeats line 3",
        f"{source}:8: line is not UTF-8 text",
    ]
    listed = json.loads(cli("streamers", "list", "--json").stdout)
    assert [(s["username"], s["channel_id"]) for s in listed] == [
        ("alice", 101),
        ("bob", None),
        ("erin", 105),
    ]
    code, out, err = cli("streamers", "import", "-", input="alice\nbob,,\nfrank\n")
    assert (code, out, err) == (0, "imported <stdin>: 1 added, 2 already present\n", "")


def test_import_of_a_spreadsheet_export(cli: CliRunner, tmp_path: Path) -> None:
    """BOM, CRLF, quoted cells and a header, as a spreadsheet saves them; one bad row, the rest import."""
    source = tmp_path / "export.csv"
    source.write_bytes(
        "slug,channel_id,user_id,chatroom_id\r\n"
        '"xqc","668","676","668"\r\n'
        '"Adin_Ross","1069","",""\r\n'
        '"not a slug","5","",""\r\n'
        '"amouranth","7","8",""\r\n'.encode("utf-8-sig")
    )
    assert source.read_bytes().startswith(b"\xef\xbb\xbfslug,")
    code, out, err = cli("streamers", "import", str(source))
    assert code == 1
    assert out == f"imported {source}: 3 added, 0 already present, 1 bad line not imported\n"
    assert err.splitlines() == [f"{source}:4: slug 'not a slug' may only contain letters, digits, '_' and '-'"]
    listed = json.loads(cli("streamers", "list", "--json").stdout)
    assert [(s["username"], s["channel_id"], s["kick_user_id"]) for s in listed] == [
        ("adin_ross", 1069, None),
        ("amouranth", 7, 8),
        ("xqc", 668, 676),
    ]


def test_import_of_a_missing_file(cli: CliRunner, tmp_path: Path) -> None:
    code, out, err = cli("streamers", "import", str(tmp_path / "absent.txt"))
    assert code == 2 and out == ""
    assert_one_error(err, "cannot read", "absent.txt", "No such file or directory")


def test_import_shows_progress_on_a_terminal(database_url: str, tmp_path: Path) -> None:
    source = tmp_path / "many.txt"
    source.write_text("".join(f"s{i}\n" for i in range(2500)))
    primary, replica = os.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kick_monitor.cli.main", "streamers", "import", str(source)],
            env=clean_environment(KICK_MONITOR_DATABASE_URL=database_url),
            stdout=subprocess.PIPE,
            stderr=replica,
            text=True,
            timeout=60,
            check=False,
        )
        os.close(replica)
        shown = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0
    assert done.stdout == f"imported {source}: 2500 added, 0 already present\n"
    assert b"\rimporting: " in shown and b"2500 added" in shown
