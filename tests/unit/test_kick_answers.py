"""Kick's official answers, exactly as the Kick facts (section 2) show them, parse as they should."""

from __future__ import annotations

from datetime import UTC, datetime

from kick_monitor.kick_api import ChannelInfo, LiveStreamV2, _ChannelsAnswer, _LivestreamsV2Answer

# Section 2 of the Kick facts, verbatim but for the elided "..": one live channel item.
CHANNELS_ANSWER = (
    b'{"data":[{"broadcaster_user_id":1,"slug":"xqc","stream_title":"title","category":{"id":15,"name":"Just'
    b' Chatting","thumbnail":""},"stream":{"is_live":true,"start_time":"2025-01-01T11:00:00+11:00",'
    b'"viewer_count":1,"url":"","key":"","is_mature":false,"language":"en","thumbnail":""}}],"message":"OK"}'
)


def test_channels_answer_with_an_offset_start_time() -> None:
    (item,) = _ChannelsAnswer.model_validate_json(CHANNELS_ANSWER).data
    assert isinstance(item, ChannelInfo)
    assert (item.broadcaster_user_id, item.slug, item.stream_title, item.is_live) == (1, "xqc", "title", True)
    # 11:00 at +11:00 is midnight UTC: the offset is honoured, not dropped
    assert item.started_at == datetime(2025, 1, 1, 0, 0, tzinfo=UTC).timestamp()


def test_offline_channel_has_no_start() -> None:
    offline = CHANNELS_ANSWER.replace(b'"is_live":true', b'"is_live":false').replace(
        b"2025-01-01T11:00:00+11:00", b"0001-01-01T00:00:00Z")
    (item,) = _ChannelsAnswer.model_validate_json(offline).data
    assert not item.is_live and item.started_at is None


def test_v2_livestreams_answer() -> None:
    body = (
        b'{"data":[{"id":"7d8e0c52-7a43-4bd5-a9c5-2b7f1f5b1a10","title":"t","started_at":"2025-01-01T11:00:00+11:00",'
        b'"viewer_count":3,"broadcaster_user":{"id":676,"username":"xqc","is_verified":true,"profile_picture":""},'
        b'"channel":{"slug":"xqc"},"category":{"id":15,"name":"Just Chatting"},"tags":[],"language_code":"en"}],'
        b'"pagination":{"next_cursor":"abc"},"message":"OK"}'
    )
    answer = _LivestreamsV2Answer.model_validate_json(body)
    (stream,) = answer.data
    assert isinstance(stream, LiveStreamV2)
    assert (stream.user_id, stream.id, stream.channel and stream.channel.slug) == (
        676, "7d8e0c52-7a43-4bd5-a9c5-2b7f1f5b1a10", "xqc")
    assert answer.pagination is not None and answer.pagination.next_cursor == "abc"
