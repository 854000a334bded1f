"""Property tests: no input makes the parser raise, and only well-formed lifecycle
payloads on known channels produce a change.

10,000 generated frames per run: 3,000 structured + 3,500 arbitrary + 3,500 corrupted.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kick_monitor.events import (
    LIFECYCLE_EVENTS,
    LIVESTREAM_UPDATED,
    MAX_ID,
    STOP_STREAM_BROADCAST,
    STREAMER_IS_LIVE,
    AppEvent,
    StatusTracker,
    TitleUpdate,
    parse_frame,
)
from kick_monitor.messages import StatusChange, StreamerRef

pytestmark = pytest.mark.timeout(60)

KNOWN = 668
MAX_BYTES = 64 * 1024
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc80", "\udfff"])
huge_text = st.sampled_from([1_000, 20_000, 70_000]).map(lambda n: "x" * n)
text = st.one_of(st.text(max_size=40), SURROGATES, huge_text)
ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),  # orjson's range
    st.sampled_from([0, 1, KNOWN, KNOWN + 1, MAX_ID, -KNOWN]),
)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)
# Junk for single fields: flat, so drawing six of them per frame stays cheap.
junk = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)
NOISE_EVENTS = [
    "App\\Events\\ChatMessageEvent",
    "pusher:ping",
    "GoalProgressUpdateEvent",
]
# None in these lists means "generate one"; repeats set the odds.
EVENT_CHOICES = [*sorted(LIFECYCLE_EVENTS) * 3, *NOISE_EVENTS, None, None]
CHANNEL_CHOICES = [f"channel.{KNOWN}", f"channel_{KNOWN}"] * 3 + [
    "channel.1",
    f"chatrooms.{KNOWN}.v2",
    None,
    None,
]
MISSING = object()
# Hand-picked wrong values (bool-as-int, float ids, string ids, out of range, containers,
# surrogates, huge strings): one cheap draw each, mixed with generated junk.
ODD: list[object] = [
    MISSING,
    None,
    True,
    False,
    0,
    -1,
    1.5,
    "",
    "668",
    [],
    {},
    [KNOWN],
    {"id": KNOWN},
    {"id": KNOWN + 1},
    KNOWN + 1,
    MAX_ID + 1,
    2**64 - 1,
    "\ud800",
    "x" * 70_000,
]
FIELDS = ["id", "channel_id", "channel", "session_title", "created_at", "is_live"]


@st.composite
def payloads(draw: st.DrawFn) -> object:
    """A valid lifecycle payload with 0-3 fields broken (wrong, missing or junk)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    stream: dict[str, object] = {
        "id": draw(st.sampled_from([74265904, 1, MAX_ID])),
        "session_title": draw(st.sampled_from(["title", "🌟", "x" * 30_000])),
        "created_at": draw(
            st.sampled_from(["2025-09-14T16:11:18.000000Z", "2023-06-28 20:48:51"])
        ),
    }
    if draw(st.booleans()):
        stream["channel_id"] = KNOWN
    else:
        stream["channel"] = {"id": KNOWN, "is_banned": False}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(FIELDS))
        value = draw(st.one_of(st.sampled_from(ODD), junk))
        if value is MISSING:
            stream.pop(name, None)
        else:
            stream[name] = value
    wrapped = draw(st.sampled_from([stream] * 6 + [MISSING, None, [], "x"]))
    return {} if wrapped is MISSING else {"livestream": wrapped}


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, object, object]:
    """(event, channel, data) with `data` an encoded string, an object or garbage."""
    payload = draw(payloads())
    try:
        encoded = orjson.dumps(payload).decode()
        forms = [encoded, encoded, payload, encoded[: len(encoded) // 2], MISSING]
    except orjson.JSONEncodeError:  # a lone surrogate inside: no JSON string form
        forms = [payload, MISSING]
    data = draw(st.sampled_from(forms))
    if data is MISSING:
        data = draw(st.one_of(text, json_values))
    event = draw(st.sampled_from(EVENT_CHOICES)) or draw(text)
    channel = draw(st.sampled_from(CHANNEL_CHOICES))
    if channel is None:
        channel = draw(st.one_of(st.none(), text))
    return event, channel, data


def valid_id(value: object) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def well_formed(event: str, channel: object, data: object) -> bool:
    """The spec, written out independently: would this frame change an unknown channel?"""
    if event not in LIFECYCLE_EVENTS or channel not in (
        f"channel.{KNOWN}",
        f"channel_{KNOWN}",
    ):
        return False
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
    if not isinstance(data, dict):
        return False
    known_shape = event in (STREAMER_IS_LIVE, STOP_STREAM_BROADCAST, LIVESTREAM_UPDATED)
    stream = data.get("livestream")
    if stream is None:
        if known_shape:
            return False
        stream = {}
    if not isinstance(stream, dict):
        return False
    livestream_id = stream.get("id")
    if (livestream_id is None and known_shape) or not (
        livestream_id is None or valid_id(livestream_id)
    ):
        return False
    nested = stream.get("channel")
    if nested is not None and not isinstance(nested, dict):
        return False
    claims = [stream.get("channel_id"), (nested or {}).get("id")]
    claims = [c for c in claims if c is not None]
    if not claims and event in (STREAMER_IS_LIVE, STOP_STREAM_BROADCAST):
        return False
    if any(not valid_id(c) or c != KNOWN for c in claims):
        return False
    online = event in (STREAMER_IS_LIVE, LIVESTREAM_UPDATED)
    return not (online and stream.get("is_live") is False)


def run(raw: bytes | str) -> tuple[StatusTracker, StatusChange | TitleUpdate | None]:
    tracker = StatusTracker([StreamerRef(1, "s", KNOWN, None)])
    ev = parse_frame(
        raw,
        received_at=1.0,
        received_mono=1.0,
        stats=tracker.stats,
        max_bytes=MAX_BYTES,
    )
    return tracker, (tracker.apply(ev) if ev is not None else None)


@settings(FUZZ, max_examples=3000)
@given(frames())
@example(("App\\Events\\LivestreamCancelled", f"channel.{KNOWN}", {"livestream": {"id": float("inf")}}))
def test_structured_frames_change_only_when_well_formed(
    frame: tuple[str, object, object],
) -> None:
    event, channel, data = frame
    try:
        raw = orjson.dumps({"event": event, "channel": channel, "data": data})
    except orjson.JSONEncodeError:
        # A lone surrogate cannot travel in a JSON frame: hand the event over decoded.
        tracker = StatusTracker([StreamerRef(1, "s", KNOWN, None)])
        name = channel if isinstance(channel, str) else None
        result = tracker.apply(AppEvent(event, name, data, 0, 1.0, 1.0))
    else:
        tracker, result = run(raw)
        if len(raw) > MAX_BYTES:
            assert result is None and tracker.stats.malformed == {"oversize": 1}
            return
        # Judge the frame as it travelled: orjson writes a non-finite float (an id of inf) as null.
        sent = orjson.loads(raw)
        event, channel, data = sent["event"], sent["channel"], sent["data"]
    expected = well_formed(event, channel, data)
    assert (result is not None) == expected, (
        event,
        channel,
        data,
        tracker.stats.malformed,
    )
    if isinstance(result, StatusChange):
        assert result.channel_id == KNOWN and result.status in ("online", "offline")
    assert not isinstance(result, TitleUpdate)  # nothing was known online


@settings(FUZZ, max_examples=3500)
@given(st.one_of(st.binary(max_size=600), st.text(max_size=300)))
def test_arbitrary_input_never_raises(raw: bytes | str) -> None:
    _, result = run(raw)
    assert result is None or isinstance(result, StatusChange)


@st.composite
def corrupted(draw: st.DrawFn) -> bytes | str:
    """A real live frame with invalid UTF-8, a surrogate, truncation or deep nesting put in."""
    stream = {
        "id": 74265904,
        "channel_id": KNOWN,
        "session_title": "t",
        "created_at": "x",
    }
    good = orjson.dumps(
        {
            "event": STREAMER_IS_LIVE,
            "channel": f"channel.{KNOWN}",
            "data": orjson.dumps({"livestream": stream}).decode(),
        }
    )
    at = draw(st.integers(0, len(good)))
    how = draw(st.sampled_from(["bytes", "surrogate", "escape", "cut", "nest", "flip"]))
    if how == "bytes":
        return (
            good[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
            + good[at:]
        )
    if how == "surrogate":
        text_frame = good.decode()
        return text_frame[:at] + draw(SURROGATES) + text_frame[at:]
    if how == "escape":
        return good[:at] + b"\\ud800" + good[at:]
    if how == "cut":
        return good[:at]
    if how == "nest":
        depth = draw(st.integers(1, 3000))
        return good[:at] + b"[" * depth + good[at:]
    return good[:at] + bytes([good[at % len(good)] ^ 0x20]) + good[at + 1 :]


@settings(FUZZ, max_examples=3500)
@given(corrupted())
def test_corrupted_real_frames_never_raise(raw: bytes | str) -> None:
    tracker, result = run(raw)
    if (
        result is not None
    ):  # a corruption that left a valid frame (e.g. inside the title)
        assert isinstance(result, StatusChange) and result.channel_id == KNOWN
        assert result.livestream_id == 74265904
    else:
        assert (
            tracker.stats.malformed
            or tracker.stats.ignored
            or tracker.stats.unknown_channel
        )
