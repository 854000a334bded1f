"""Every verified HTTPS connection shares one TLS context (kick_monitor/tls.py), and verifies as before.

A real TLS server on loopback (kick_tools/tls_server.py, certificates made there with `cryptography`),
real requests sessions.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
import requests

from kick_monitor import tls
from kick_monitor.kick_api import _Transport
from kick_monitor.notify_sender import SenderPool
from kick_tools.tls_server import self_signed, serve


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """`trusted` (its certificate is in the bundle REQUESTS_CA_BUNDLE names, as an operator would set it),
    `untrusted`, and `misnamed` (trusted, but issued for another host name); contexts forgotten afterwards."""
    trusted = self_signed(tmp_path, "trusted", "localhost")
    untrusted = self_signed(tmp_path, "untrusted", "localhost")
    misnamed = self_signed(tmp_path, "misnamed", "other.example")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trusted[0].read_bytes() + misnamed[0].read_bytes())
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    tls.forget_contexts()
    running = {name: serve(*pair) for name, pair in
               (("trusted", trusted), ("untrusted", untrusted), ("misnamed", misnamed))}
    try:
        yield {name: f"https://localhost:{server.server_port}/" for name, server in running.items()}
    finally:
        for server in running.values():
            server.shutdown()
            server.server_close()
        tls.forget_contexts()


def pool_contexts(session: requests.Session, url: str) -> list[object]:
    """The TLS context each of the session's connection pools for `url`'s scheme was keyed by."""
    manager = session.get_adapter(url).poolmanager  # type: ignore[attr-defined]
    return [key.key_ssl_context for key in manager.pools.keys()]  # noqa: SIM118 (the container is not iterable)


def shared() -> ssl.SSLContext:
    return tls.context_for(tls.default_bundle())


def test_sessions_share_the_one_context_and_requests_succeed(servers: dict[str, str]) -> None:
    tls.preload(("https://localhost/",))  # what the coordinator does before it forks
    shared_before = shared()
    sessions = [tls.new_session() for _ in range(3)]
    for session in sessions:
        assert session.get(servers["trusted"], timeout=5).text == "ok"
        assert pool_contexts(session, servers["trusted"]) == [shared_before]
    assert shared() is shared_before  # built once
    assert shared_before.verify_mode == ssl.CERT_REQUIRED and shared_before.check_hostname


def test_an_untrusted_certificate_or_a_wrong_host_name_is_still_refused(servers: dict[str, str]) -> None:
    session = tls.new_session()
    with pytest.raises(requests.exceptions.SSLError):
        session.get(servers["untrusted"], timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        session.get(servers["misnamed"], timeout=5)
    assert session.get(servers["trusted"], timeout=5).text == "ok"


def test_a_request_that_does_not_verify_never_touches_the_shared_context(servers: dict[str, str]) -> None:
    session = tls.new_session()
    assert session.get(servers["untrusted"], timeout=5, verify=False).text == "ok"
    assert shared().verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(requests.exceptions.SSLError):  # and verification is still on for the next one
        tls.new_session().get(servers["untrusted"], timeout=5)


def test_the_kick_api_transport_and_the_notifier_use_the_shared_context(servers: dict[str, str]) -> None:
    url = servers["trusted"]
    transport = _Transport((5.0, 5.0), bucket=None, retry=None, stats=None,  # type: ignore[arg-type]
                           closed=threading.Event())  # _http only sends: no pacing, no retries, no stats
    assert transport._http("GET", url).text == "ok"
    [session] = transport._idle  # one request, one session, idle again
    assert pool_contexts(session, url) == [shared()]
    senders = SenderPool(threads=1, timeout=lambda: 5.0)
    try:
        session = senders._session()
        assert session.get(url, timeout=5).text == "ok"
        assert pool_contexts(session, url) == [shared()]
    finally:
        senders.close()


def test_preload_builds_a_context_only_for_https(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    tls.forget_contexts()
    try:
        tls.preload(("http://127.0.0.1:1/", "http://127.0.0.1:2/token"))
        assert tls._CONTEXTS == {}
        tls.preload(("http://127.0.0.1:1/", "HTTPS://api.kick.com"))
        assert list(tls._CONTEXTS) == [certifi.where()]  # requests' own default without an environment bundle
    finally:
        tls.forget_contexts()


def test_what_each_verify_value_verifies_with(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("")
    assert tls.bundle_of(True) == certifi.where()
    assert tls.bundle_of(str(bundle)) == str(bundle)
    assert tls.bundle_of(str(tmp_path)) is None  # a directory: urllib3's own context
    assert tls.bundle_of(False) is None
