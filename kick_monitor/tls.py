"""One TLS context for every HTTPS client of the service tree: Kick's API and OAuth, notification targets.

For each connection it opens, urllib3 (under requests) builds a new `ssl.SSLContext` and loads the whole
CA bundle into it (certifi's ~140 certificates), and keeps it as long as the keep-alive connection lives:
measured, ~1.2 MB of private memory per live connection (`python -m kick_tools.bench.tls_memory`,
docs/performance.md, round 14) — a worker's API and token connections, each notifier thread's. A context
built once (~1.5 MB), in the coordinator before it forks (`preload`), is shared by every role instead.
Verification is unchanged: the context is `ssl.create_default_context` with the bundle requests would
use (certificate and host name required).

One context per CA bundle file: certifi's, or the one `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE` names (requests
prefers it). A request with `verify=False` or a CA directory gets urllib3's own context as before, so no
setting of one request can change what a shared context trusts or whether it verifies.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import certifi
import requests
from requests.adapters import HTTPAdapter

_CONTEXTS: dict[str, ssl.SSLContext] = {}  # by CA bundle file


def context_for(cafile: str) -> ssl.SSLContext:
    """The process's (and, built before fork, the tree's) client context for one CA bundle file:
    `ssl.create_default_context`, so certificate and host name are required."""
    found = _CONTEXTS.get(cafile)
    if found is None:  # two threads may both build one: the last kept, both correct
        found = _CONTEXTS[cafile] = ssl.create_default_context(cafile=cafile)
    return found


def forget_contexts() -> None:
    """Drop every context built so far (tests that change the bundle)."""
    _CONTEXTS.clear()


def default_bundle() -> str:
    """What a session asked to verify uses: requests' rule, the environment's bundle before certifi's."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


def bundle_of(verify: Any) -> str | None:
    """The CA bundle file a request verifies with, or None when it does not verify or names a directory
    (urllib3's own context then, as without this module)."""
    if verify is True:
        return certifi.where()  # requests turned an environment bundle into a path already
    if isinstance(verify, str) and os.path.isfile(verify):
        return verify
    return None


def preload(urls: tuple[str, ...]) -> None:
    """Build the context now (before the first fork) when any configured URL is HTTPS."""
    if any(url.lower().startswith("https://") for url in urls):
        context_for(default_bundle())


class SharedContextAdapter(HTTPAdapter):
    """requests' adapter with a shared context for verified HTTPS (requests' subclassing hooks)."""

    def build_connection_pool_key_attributes(  # type: ignore[override]  # the stubs' TypedDicts are private
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        found = super().build_connection_pool_key_attributes(request, verify, cert)
        host_params: dict[str, Any] = dict(found[0])
        pool_kwargs: dict[str, Any] = dict(found[1])
        bundle = bundle_of(verify)
        if bundle is not None and host_params.get("scheme") == "https":
            pool_kwargs["ssl_context"] = context_for(bundle)
            pool_kwargs.pop("ca_certs", None)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if bundle_of(verify) is not None:  # the context holds the bundle: urllib3 must not load it again
            conn.ca_certs = None
            conn.ca_cert_dir = None


def new_session() -> requests.Session:
    """A requests session whose verified HTTPS connections share one context per CA bundle."""
    session = requests.Session()
    session.mount("https://", SharedContextAdapter())
    return session
