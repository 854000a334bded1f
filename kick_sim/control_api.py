"""Control API over HTTP (JSON in, JSON out) for a simulator running as its own process.

Benchmarks drive `kick-monitor sim` through these endpoints; they map one to one onto the
in-process Simulator methods. Bad input is a 400 with {"error": ...}, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from kick_sim.http_server import Request, Response, json_response
from kick_sim.state import SimError, truth_jsonl
from kick_sim.webhook_settings import WebhookFaults

if TYPE_CHECKING:
    from kick_sim.engine import Engine

Route = Callable[[Request, dict[str, Any]], Awaitable[Any]]
NUMBER = (int, float)
_REQUIRED = object()


def arg(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
    """body[name] if it has type `kind`; `default` when absent (or null, if the default is None)."""
    value = body.get(name)
    if name not in body or (value is None and default is None):
        if default is _REQUIRED:
            raise SimError(f"{name!r} is required")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise SimError(f"{name!r} must be {' or '.join(k.__name__ for k in kinds)}")
    return value


class ControlApi:
    """Routes /control/* requests to the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/control/info"): self._info,
            ("GET", "/control/stats"): self._stats,
            ("GET", "/control/truth"): self._truth,
            ("GET", "/control/streamers"): self._list_streamers,
            ("POST", "/control/streamers"): self._create_streamers,
            ("POST", "/control/live"): self._live,
            ("POST", "/control/title"): self._title,
            ("POST", "/control/flip"): self._flip,
            ("POST", "/control/flip/stop"): self._flip_stop,
            ("POST", "/control/flip/wait"): self._flip_wait,
            ("POST", "/control/noise"): self._noise,
            ("POST", "/control/drop"): self._drop,
            ("POST", "/control/error"): self._error,
            ("POST", "/control/malformed"): self._malformed,
            ("POST", "/control/silent"): self._silent,
            ("POST", "/control/refuse"): self._refuse,
            ("POST", "/control/api_mode"): self._api_mode,
            ("POST", "/control/api_delay"): self._api_delay,
            ("POST", "/control/rate_limit"): self._rate_limit,
            ("POST", "/control/livestreams_v1"): self._livestreams_v1,
            ("POST", "/control/wrong_data"): self._wrong_data,
            ("GET", "/control/broadcasts"): self._broadcasts,
            ("POST", "/control/expire_tokens"): self._expire_tokens,
            ("POST", "/control/revoke_secret"): self._revoke_secret,
            ("POST", "/control/rotate_secret"): self._rotate_secret,
            ("POST", "/control/token_ttl"): self._token_ttl,
            # Events API (issue 16)
            ("GET", "/control/event_subscriptions"): self._event_subscriptions,
            ("POST", "/control/event_subscriptions/drop"): self._drop_event_subscriptions,
            ("POST", "/control/event_subscriptions/limit"): self._event_subscription_limit,
            ("POST", "/control/webhooks/sign"): self._sign,
            ("POST", "/control/webhooks/url"): self._webhook_url,
            ("POST", "/control/webhooks/faults"): self._webhook_faults,
            ("GET", "/control/webhooks/messages"): self._webhook_messages,
            ("GET", "/control/webhooks/attempts"): self._webhook_attempts,
            ("GET", "/control/webhooks/stats"): self._webhook_stats,
            ("POST", "/control/webhooks/replay"): self._webhook_replay,
            ("POST", "/control/webhooks/wait"): self._webhook_wait,
        }
        self._paths = {path for _, path in self._routes}

    async def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        route = self._routes.get((request.method, path))
        if route is None:
            status = 405 if path in self._paths else 404
            return json_response(status, {"error": f"no route for {request.method} {request.path}"})
        try:
            body = request.json() if request.method == "POST" else {}
            if not isinstance(body, dict):
                raise SimError("the request body must be a JSON object")
            result = await route(request, body)
        except (SimError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            return json_response(400, {"error": str(exc)})
        return result if isinstance(result, Response) else json_response(200, result)

    async def _info(self, request: Request, body: dict[str, Any]) -> Any:
        return self.engine.urls()

    async def _stats(self, request: Request, body: dict[str, Any]) -> Any:
        return self.engine.stats()

    async def _truth(self, request: Request, body: dict[str, Any]) -> Any:
        """JSON lines; ?since=SEQ returns only later transitions, for incremental polling."""
        since = request.query.get("since", ["0"])[0]
        if not since.isdigit():
            raise SimError("since must be a non-negative integer")
        return Response(200, truth_jsonl(self.engine.world.truth[int(since) :]), "application/x-ndjson")

    async def _list_streamers(self, request: Request, body: dict[str, Any]) -> Any:
        states = self.engine.world.states
        return {
            "streamers": [
                {**s.streamer.to_json(), "live": s.live, "livestream_id": s.livestream_id, "title": s.title}
                for s in states
            ]
        }

    async def _create_streamers(self, request: Request, body: dict[str, Any]) -> Any:
        created = self.engine.world.create_streamers(
            arg(body, "count", int), arg(body, "prefix", str, "streamer"), arg(body, "live_fraction", NUMBER, 0.0)
        )
        return {"created": [streamer.to_json() for streamer in created]}

    async def _live(self, request: Request, body: dict[str, Any]) -> Any:
        transition = self.engine.set_live(
            arg(body, "slug", str),
            arg(body, "live", bool),
            arg(body, "title", str, None),
            arg(body, "send_event", bool, True),
        )
        return transition.to_json()

    async def _title(self, request: Request, body: dict[str, Any]) -> Any:
        transition = self.engine.update_title(
            arg(body, "slug", str), arg(body, "title", str), arg(body, "send_event", bool, True)
        )
        return transition.to_json()

    async def _flip(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.start_flipping(
            rate=arg(body, "rate", NUMBER),
            duration=arg(body, "duration", NUMBER, None),
            burst=arg(body, "burst", int, None),
            spacing=arg(body, "spacing", str, "poisson"),
            missed_fraction=arg(body, "missed_fraction", NUMBER, 0.0),
        )
        return {"flipping": True}

    async def _flip_stop(self, request: Request, body: dict[str, Any]) -> Any:
        return {"flipping": False, "flips": self.engine.flipper.stop()}

    async def _flip_wait(self, request: Request, body: dict[str, Any]) -> Any:
        timeout = arg(body, "timeout", NUMBER, 60.0)
        with contextlib.suppress(TimeoutError):  # the answer says whether it is done
            await asyncio.wait_for(self.engine.flipper.wait_done(), timeout)
        return {"done": not self.engine.flipper.running, "flips": self.engine.flipper.flips}

    async def _noise(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.noise.set_rate(float(arg(body, "rate", NUMBER)))
        return {"noise_rate": self.engine.noise.rate}

    async def _drop(self, request: Request, body: dict[str, Any]) -> Any:
        return {"dropped": self.engine.pusher.drop(arg(body, "count", int, None))}

    async def _error(self, request: Request, body: dict[str, Any]) -> Any:
        sent = await self.engine.pusher.send_error(
            arg(body, "code", int, 4200),
            arg(body, "message", str, "Please reconnect immediately"),
            arg(body, "close", bool, True),
            arg(body, "count", int, None),
        )
        return {"sent": sent}

    async def _malformed(self, request: Request, body: dict[str, Any]) -> Any:
        return {"frames": self.engine.send_malformed(arg(body, "kind", str))}

    async def _silent(self, request: Request, body: dict[str, Any]) -> Any:
        return {"silenced": self.engine.pusher.set_silent(arg(body, "silent", bool, True))}

    async def _refuse(self, request: Request, body: dict[str, Any]) -> Any:
        refuse = arg(body, "refuse", bool, True)
        self.engine.pusher.refuse(refuse)
        return {"refuse": refuse}

    async def _api_mode(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.faults.set_mode(
            arg(body, "mode", str, None),
            surface=arg(body, "surface", str, "all"),
            error_status=arg(body, "error_status", int, 500),
            retry_after=arg(body, "retry_after", int, 1),
            cloudflare_body=arg(body, "cloudflare_body", str, "html"),
        )
        return {"api_modes": self.engine.faults.modes}

    async def _api_delay(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.faults.set_delay(float(arg(body, "seconds", NUMBER)))
        return {"api_delay": self.engine.faults.delay}

    async def _rate_limit(self, request: Request, body: dict[str, Any]) -> Any:
        requests = arg(body, "requests", int, None)
        self.engine.faults.set_rate_limit(requests, float(arg(body, "per_seconds", NUMBER, 60.0)))
        return {"requests": requests}

    async def _livestreams_v1(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.api.set_livestreams_v1(arg(body, "mode", str))
        return {"livestreams_v1": self.engine.api.livestreams_v1}

    async def _wrong_data(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.api.set_wrong_data_over(arg(body, "over", int, None), arg(body, "kind", str, "live"))
        return {"wrong_data_over": self.engine.api.wrong_data_over, "kind": self.engine.api.wrong_data_kind}

    async def _broadcasts(self, request: Request, body: dict[str, Any]) -> Any:
        return {"broadcasts": [broadcast.to_json() for broadcast in self.engine.world.broadcasts]}

    async def _expire_tokens(self, request: Request, body: dict[str, Any]) -> Any:
        return {"expired": self.engine.tokens.expire_all()}

    async def _revoke_secret(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.tokens.revoke(arg(body, "revoked", bool, True))
        return {"revoked": self.engine.tokens.revoked}

    async def _rotate_secret(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.tokens.rotate(arg(body, "client_secret", str))
        return {"rotated": True}  # never echo a secret

    async def _token_ttl(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.tokens.set_ttl(float(arg(body, "seconds", NUMBER)))
        return {"token_ttl": self.engine.tokens.ttl}

    async def _event_subscriptions(self, request: Request, body: dict[str, Any]) -> Any:
        """?broadcaster_user_id=N narrows to one broadcaster; items as Kick's GET lists them."""
        raw = request.query.get("broadcaster_user_id", [""])[0]
        if raw and not raw.isdigit():
            raise SimError("broadcaster_user_id must be an integer")
        items = self.engine.event_subscriptions.list_all(int(raw) if raw else None)
        return {"subscriptions": [item.to_json() for item in items], "limit": self.engine.event_subscriptions.limit}

    async def _drop_event_subscriptions(self, request: Request, body: dict[str, Any]) -> Any:
        return {"dropped": self.engine.drop_event_subscriptions(arg(body, "count", int))}

    async def _event_subscription_limit(self, request: Request, body: dict[str, Any]) -> Any:
        self.engine.event_subscriptions.set_limit(arg(body, "limit", int))
        return {"limit": self.engine.event_subscriptions.limit}

    async def _sign(self, request: Request, body: dict[str, Any]) -> Any:
        """Kick-Event-Signature for {message_id, timestamp, body} (body a string, sent as UTF-8)."""
        payload = arg(body, "body", str).encode()
        signature = await asyncio.to_thread(  # RSA signing (and a first key generation) off the loop
            self.engine.signer.sign, arg(body, "message_id", str), arg(body, "timestamp", str), payload
        )
        return {"signature": signature}

    async def _webhook_url(self, request: Request, body: dict[str, Any]) -> Any:
        url = arg(body, "url", str, None)
        if url is not None:
            await asyncio.to_thread(lambda: self.engine.signer.private_key)
        self.engine.webhooks.set_url(url)
        return {"url": self.engine.webhooks.url}

    async def _webhook_faults(self, request: Request, body: dict[str, Any]) -> Any:
        """Changes only the knobs named; {"reset": true} first restores all defaults."""
        changes = dict(body)
        base = WebhookFaults() if changes.pop("reset", False) is True else self.engine.webhooks.faults
        faults = base.updated(changes)
        self.engine.webhooks.set_faults(faults)
        return faults.to_json()

    async def _webhook_messages(self, request: Request, body: dict[str, Any]) -> Any:
        """JSON lines, one per message; ?since=N skips the first N."""
        messages = self.engine.webhooks.snapshot_messages(_since(request))
        return Response(200, b"".join(orjson.dumps(m.to_json()) + b"\n" for m in messages), "application/x-ndjson")

    async def _webhook_attempts(self, request: Request, body: dict[str, Any]) -> Any:
        """JSON lines, one per attempt; ?since=N skips the first N."""
        attempts = self.engine.webhooks.snapshot_attempts(_since(request))
        return Response(200, b"".join(orjson.dumps(a.to_json()) + b"\n" for a in attempts), "application/x-ndjson")

    async def _webhook_stats(self, request: Request, body: dict[str, Any]) -> Any:
        return {**self.engine.webhooks.stats(), "unsubscribed_ids": list(self.engine.webhooks.unsubscribed)}

    async def _webhook_replay(self, request: Request, body: dict[str, Any]) -> Any:
        ids = arg(body, "message_ids", list, None)
        if ids is not None and not all(isinstance(i, str) for i in ids):
            raise SimError("'message_ids' must be a list of strings")
        return {"replayed": self.engine.webhooks.replay(ids, arg(body, "count", int, 1))}

    async def _webhook_wait(self, request: Request, body: dict[str, Any]) -> Any:
        timeout = float(arg(body, "timeout", NUMBER, 30.0))
        return {"idle": await asyncio.to_thread(self.engine.webhooks.wait_idle, timeout)}


def _since(request: Request) -> int:
    since = request.query.get("since", ["0"])[0]
    if not since.isdigit():
        raise SimError("since must be a non-negative integer")
    return int(since)
