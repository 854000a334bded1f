"""A small asyncio HTTP/1.1 server: enough for Kick's REST API, OAuth and the control API.

Supports GET/POST (any method, really), query strings, Content-Length bodies, keep-alive
and `Expect: 100-continue`; rejects chunked request bodies with 501. Handlers are
coroutines from Request to Response; a handler that raises answers 500, never kills the
server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
KEEP_ALIVE_SECONDS = 30.0
REASONS = {
    200: "OK", 204: "No Content", 100: "Continue", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP request we can answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request; the body is read in full (Content-Length only)."""

    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    def form(self) -> dict[str, list[str]]:
        """The body as application/x-www-form-urlencoded fields."""
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    def json(self) -> Any:
        """The body as JSON; an empty body is {}. Raises ValueError when it is not JSON."""
        return orjson.loads(self.body) if self.body.strip() else {}


@dataclass(slots=True)
class Response:
    """What a handler answers; Content-Length and Connection are added when written."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(payload), "application/json", headers or {})


def text_response(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(status, text.encode(), content_type)


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves one handler on host:port until stopped; requests on a connection run in order."""

    def __init__(self, handler: Handler, host: str, port: int, name: str) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._name = name
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=MAX_HEADER_BYTES)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            keep_alive = True
            while keep_alive:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), KEEP_ALIVE_SECONDS)
                    request, keep_alive = _parse_head(head)
                    if request.headers.get("expect", "").lower() == "100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    request = await _read_body(reader, request)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await _write(writer, json_response(431, {"error": "headers too large"}), False)
                    return
                except BadRequest as exc:
                    await _write(writer, json_response(exc.status, {"error": str(exc)}), False)
                    return
                response = await self._answer(request)
                await _write(writer, response, keep_alive)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception:  # a bug in one handler must not take the server down
            log.exception("%s: handler failed for %s %s", self._name, request.method, request.path)
            return json_response(500, {"error": "internal error"})


def _parse_head(head: bytes) -> tuple[Request, bool]:
    """Request line and headers -> (Request without body, keep_alive)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    url = urlsplit(target)
    request = Request(method.upper(), unquote(url.path), parse_qs(url.query, keep_blank_values=True), headers)
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return request, keep_alive


async def _read_body(reader: asyncio.StreamReader, request: Request) -> Request:
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise BadRequest(501, "chunked request bodies are not supported")
    raw_length = request.headers.get("content-length", "0")
    if not raw_length.isdigit():
        raise BadRequest(400, "bad Content-Length")
    length = int(raw_length)
    if length > MAX_BODY_BYTES:
        raise BadRequest(413, "body too large")
    body = await reader.readexactly(length) if length else b""
    return Request(request.method, request.path, request.query, request.headers, body)


async def _write(writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
    head = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}"]
    head.append(f"Content-Type: {response.content_type}")
    head.append(f"Content-Length: {len(response.body)}")
    head.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head.extend(f"{name}: {value}" for name, value in response.headers.items())
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
    await writer.drain()
