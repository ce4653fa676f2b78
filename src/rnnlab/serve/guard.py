"""What stands between the network and the API: an ASGI middleware that answers before the app does.

It refuses a Host header that is not loopback, the `--host` address or one of `--allowed-hosts`
(so a page on another site cannot reach a loopback server through DNS rebinding), checks the API
key when one is set, reads a request body only up to `--max-body-bytes` and within
`--request-timeout` seconds (then hands it to the app in one piece), and adds the security headers
to every response. Every refusal has the API's one error shape: {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time

from rnnlab.config import ServeConfig

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-resource-policy", b"same-origin")]


def host_name(header: str) -> str:
    """The name in a Host header: without its port, IPv6 without its brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config
        self.state = app.state  # (the app's schedulers and capacity, for tests and metrics)
        extra = {h.strip().lower() for h in config.allowed_hosts.split(",") if h.strip()}
        self.any_host = "*" in extra
        self.hosts = LOOPBACK | extra | {config.host.lower()}
        self.api_key = config.api_key.encode("utf-8") if config.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, refusal = await self._read_body(headers, receive)
            if refusal is None:
                receive = _replay(body, receive)
        if refusal is not None:
            return await _send_error(send, *refusal)
        await self.app(scope, receive, _with_security_headers(send))

    def _refusal(self, scope, headers) -> tuple[int, str] | None:
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if not self.any_host and host not in self.hosts:
            return 400, (f"Host {host!r} is not served here (loopback and --host; add names with --allowed-hosts)")
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.api_key):
                return 401, "this server needs its API key: send the header Authorization: Bearer KEY"
        return None

    async def _read_body(self, headers, receive) -> tuple[bytes, tuple[int, str] | None]:
        limit = self.config.max_body_bytes
        too_large = (413, f"the request body is over the limit of {limit:,} bytes")
        try:
            if int(headers.get(b"content-length", b"0")) > limit:
                return b"", too_large  # refused before a byte of it is read
        except ValueError:
            return b"", (400, "the Content-Length header is not a number")
        chunks, size = [], 0
        deadline = time.monotonic() + self.config.request_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                return b"", (408, f"the request body did not arrive within {self.config.request_timeout:g} s")
            if message["type"] == "http.disconnect":
                return b"", (400, "the client went away while sending its request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A receive that gives the app the body already read, then the client's later messages
    (its disconnect)."""
    delivered = False

    async def replayed():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_security_headers(send):
    async def sending(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return sending


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
