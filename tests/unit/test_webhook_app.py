"""The receiver's answers, delivery by delivery, with the HTTP and the writer left out (see
tests/integration/test_webhook_receiver.py for them): which status, which outcome, when."""

from __future__ import annotations

import io
import time
from collections import Counter
from typing import Any

import pytest

from kick_monitor.broadcaster_directory import BroadcasterDirectory
from kick_monitor.database import DatabaseUnavailable
from kick_monitor.messages import StatusChange
from kick_monitor.webhook_app import WebhookApp
from kick_monitor.webhook_events import STATUS_EVENT
from kick_monitor.webhook_signature import Verifier, load_public_key
from tests.webhooks import Delivery, KickSigner, status_body

SIGNER = KickSigner()


class Counted:
    """Telemetry that remembers (metric, labels) → count, for the outcomes."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._name = ""
        self._labels: tuple[tuple[str, str], ...] = ()

    def __getattr__(self, name: str) -> Any:
        if not name.isupper():
            raise AttributeError(name)
        self._name, self._labels = name, ()
        return self

    def labels(self, **labels: str) -> Counted:
        self._labels = tuple(sorted(labels.items()))
        return self

    def inc(self, amount: float = 1) -> None:
        self.counts[(self._name, self._labels)] += int(amount)

    def observe(self, value: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def outcomes(self) -> dict[str, int]:
        return {dict(labels)["outcome"]: n for (name, labels), n in self.counts.items()
                if name == "WEBHOOK_DELIVERIES"}


def unreachable() -> Any:
    raise DatabaseUnavailable("no database in this test")


def directory(mapping: dict[int, tuple[int, int | None]] | None) -> BroadcasterDirectory:
    found = BroadcasterDirectory(unreachable, min_gap=3600)
    if mapping is not None:
        found._by_user = mapping  # what a load from the streamers table would have given
    return found


def make_app(taken: bool | None = True, mapping: dict[int, tuple[int, int | None]] | None = None,
             recent: frozenset[str] = frozenset()) -> tuple[WebhookApp, Counted, list[StatusChange]]:
    submitted: list[StatusChange] = []

    def submit(change: StatusChange, timeout: float) -> bool | None:
        submitted.append(change)
        return taken

    telemetry = Counted()
    app = WebhookApp(
        Verifier(load_public_key(SIGNER.public_pem), max_age=600),
        directory({7: (70, 700)} if mapping is None else mapping), submit, path="/hook", ack_timeout=1.0,
        telemetry=telemetry, is_duplicate=recent.__contains__,
    )
    return app, telemetry, submitted


def call(app: WebhookApp, delivery: Delivery | None, *, method: str = "POST", path: str = "/hook",
         **headers: str) -> tuple[str, dict[str, str]]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path}
    if delivery is not None:
        for key, value in {**SIGNER.headers(delivery), **headers}.items():
            environ["HTTP_" + key.upper().replace("-", "_")] = value
        environ["wsgi.input"] = io.BytesIO(delivery.body)
        environ["CONTENT_LENGTH"] = str(len(delivery.body))
    answer: list[Any] = []
    app(environ, lambda status, hdrs: answer.extend([status, dict(hdrs)]))
    return answer[0], answer[1]


def live(user: int = 7) -> Delivery:
    return Delivery(STATUS_EVENT, status_body(user, True, time.time()))


def test_an_accepted_delivery_is_handed_over_as_the_writers_change() -> None:
    app, telemetry, submitted = make_app()
    delivery = live()
    assert call(app, delivery)[0] == "200 OK"
    assert [(c.change_id, c.streamer_id, c.channel_id, c.source) for c in submitted] == [
        (f"webhook:{delivery.message_id}", 70, 700, "webhook")]
    assert telemetry.outcomes() == {"accepted": 1}


@pytest.mark.parametrize(("taken", "why"), [(False, "not acknowledged in time"), (None, "too many waiting")])
def test_not_durable_is_503_with_retry_after(taken: bool | None, why: str) -> None:
    app, telemetry, _ = make_app(taken=taken)
    status, headers = call(app, live())
    assert status.startswith("503") and headers["Retry-After"], why
    assert telemetry.outcomes() == {"unavailable": 1}


def test_without_a_streamer_list_it_is_503_not_a_silent_200() -> None:
    app, telemetry, submitted = make_app(mapping=None)
    app.directory = directory(None)  # never loaded: the database was down since start
    assert call(app, live())[0].startswith("503")
    assert not submitted and telemetry.outcomes() == {"unavailable": 1}


def test_a_known_message_id_is_answered_at_once() -> None:
    delivery = live()
    app, telemetry, submitted = make_app(recent=frozenset({f"webhook:{delivery.message_id}"}))
    assert call(app, delivery)[0] == "200 OK"
    assert not submitted and telemetry.outcomes() == {"duplicate": 1}


def test_another_event_version_is_ignored_not_misread() -> None:
    app, telemetry, submitted = make_app()
    assert call(app, live(), **{"Kick-Event-Version": "2"})[0] == "200 OK"
    assert not submitted and telemetry.outcomes() == {"unknown_type": 1}


def test_health_path_and_method() -> None:
    app, telemetry, _ = make_app()
    assert call(app, None, method="GET", path="/healthz")[0] == "200 OK"
    assert call(app, None, method="GET", path="/hook")[0].startswith("405")
    assert call(app, None, method="POST", path="/elsewhere")[0].startswith("404")
    assert telemetry.outcomes() == {}
