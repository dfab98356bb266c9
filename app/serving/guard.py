"""`RequestGuard`: the one ASGI middleware in front of the whole app (Gradio included). What it enforces:

- **Host**: the `Host` header must name this server: the address the request arrived on, a loopback name when it
  arrived on loopback, or a configured name (the machine's host names, `--allowed-host`). This defeats DNS
  rebinding, where a foreign site's name resolves to this server.
- **Origin**: a request whose `Origin` is not this server's own is refused, whatever its method or content type;
  an unsafe request (not GET/HEAD/OPTIONS, or /logout) or a websocket that a browser marks cross-site
  (`Sec-Fetch-Site`) is refused even without `Origin`. Clients that are not browsers (curl, gradio_client) send
  neither and pass, as authentication allows. No `Access-Control-Allow-*` header is ever added: no foreign
  origin may read.
- **Bodies**: request bodies over their limit are refused (413) from `Content-Length` before they are read, or as
  soon as the bytes received pass it. Uploads are left to Gradio's per-file limit. Requests with a body over
  LARGE_BODY (1 MB; a normal save is tens of kB) are handled one at a time, so clients sending maximal payloads
  share one slot instead of taking the CPU from everyone else.
- **Editor calls**: `component_server` calls must name a component and a server function that exist (else 404,
  where Gradio answered 500).
- **Files**: of the data root, only images in a dataset's `images/` or `thumbs/` folder are served; everything
  else there is a 404. Gradio serves its own upload cache (images inline, anything else as an attachment).
- **Sessions**: a login session (Gradio's access-token cookie) expires `session_seconds` after its login; failed
  logins are throttled per client address.
- Every response carries `nosniff`, `X-Frame-Options: SAMEORIGIN` and `Referrer-Policy: same-origin`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]

DEFAULT_PORTS = {"http": 80, "https": 443}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SERVED_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"})
SERVED_DATASET_FOLDERS = frozenset({"images", "thumbs"})
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
UPLOAD_ROUTE = "/gradio_api/upload"
COMPONENT_SERVER = "/gradio_api/component_server"
LOGIN_ROUTE = "/login"
LOGOUT = "/logout"  # a GET that changes state: another site may not log a user out
DEFAULT_BODY_LIMIT = 8 * 2**20  # bytes, any request body but uploads and editor saves
LARGE_BODY = 2**20  # bytes: requests with a larger body are handled one at a time (see RequestGuard)
LOGIN_FAILURES = 10  # failed logins from one address within LOGIN_WINDOW seconds before it must wait
LOGIN_WINDOW = 600.0
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"referrer-policy", b"same-origin"),
]


@dataclass
class GuardPolicy:
    """What `RequestGuard` allows. `allowed_hosts`: host names (lower case) accepted in `Host` besides the
    address a request arrived on; `server_fn(component_id, fn_name)`: whether the app has that editor function;
    `sessions`: `(tokens dict, cookie names)` of Gradio's login, or None without authentication."""

    data_root: Path
    allowed_hosts: frozenset[str] = frozenset()
    save_limit: int = DEFAULT_BODY_LIMIT
    body_limit: int = DEFAULT_BODY_LIMIT
    server_fn: Callable[[Any, Any], bool] = lambda component_id, fn_name: True
    sessions: Callable[[], tuple[dict, tuple[str, ...]]] | None = None
    session_seconds: float = 12 * 3600.0
    clock: Callable[[], float] = time.monotonic
    issued: dict[str, float] = field(default_factory=dict)  # login token -> clock() at login
    failures: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))  # client host -> failure times


def host_name(value: str) -> str:
    """The host name of a `Host` header or an origin, lower case without port or brackets ('' when unparsable)."""
    try:
        return (urlsplit(value if "://" in value else f"//{value}").hostname or "").lower()
    except ValueError:
        return ""


def is_loopback(name: str) -> bool:
    """Whether a host name or address stays on this machine (localhost, 127.0.0.0/8, ::1)."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str, arrived_on: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request arriving on the local address `arrived_on` may name `host_header` as its host."""
    name = host_name(host_header)
    if not name:
        return False
    local = (arrived_on or "").lower()
    return name in allowed or name == local or (is_loopback(local) and is_loopback(name))


def same_origin(origin: str, host_header: str) -> bool:
    """Whether a browser's `Origin` is the origin of a page served under `host_header` (scheme http or https; a
    `Host` without a port matches the origin's default port, as behind a proxy)."""
    try:
        o, h = urlsplit(origin), urlsplit(f"//{host_header}")
        o_port, h_port = o.port, h.port
    except ValueError:
        return False
    if o.scheme not in DEFAULT_PORTS or not o.hostname or (o.hostname.lower() != host_name(host_header)):
        return False
    return (o_port or DEFAULT_PORTS[o.scheme]) == (h_port or o_port or DEFAULT_PORTS[o.scheme])


def served_data_file(path: Path, data_root: Path) -> bool:
    """Whether `path` (resolved) is a file the app serves from the data root: an image in a dataset's images/ or
    thumbs/ folder. Paths outside the data root are not the data root's to decide (Gradio's own rules apply)."""
    rel = path.relative_to(data_root).parts
    return len(rel) == 3 and rel[1] in SERVED_DATASET_FOLDERS and path.suffix.lower() in SERVED_IMAGE_SUFFIXES


class RequestGuard:
    """ASGI middleware enforcing a `GuardPolicy` (see the module docstring) in front of `app`."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy):
        self.app, self.policy = app, policy
        self.large_slot = asyncio.Semaphore(1)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _refuse(scope, send, *refusal)
            return
        self._expire_session(headers)
        if (
            scope["type"] == "http"
            and scope["method"] not in SAFE_METHODS
            and not scope["path"].startswith(UPLOAD_ROUTE)
        ):
            body, refusal = await self._read_body(scope, headers, receive)
            if refusal is None and scope["path"].rstrip("/") == COMPONENT_SERVER:
                refusal = self._check_component_call(body)
            if refusal is not None:
                await _refuse(scope, send, *refusal)
                return
            if len(body) > LARGE_BODY:
                async with self.large_slot:
                    await self.app(scope, _replay(body, receive), self._sending(scope, send))
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, self._sending(scope, send))

    # ----- checks ----------------------------------------------------------------------------------------------

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, message) when the request is refused before it reaches the app."""
        arrived_on = (scope.get("server") or (None, None))[0]
        if not host_allowed(headers.get("host", ""), arrived_on, self.policy.allowed_hosts):
            return 403, f"host {headers.get('host', '')!r} is not this server's (see --allowed-host)"
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, headers["host"]):
            return 403, f"requests from origin {origin!r} are refused: this app answers its own pages only"
        path = scope.get("path", "")
        unsafe = scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS or path.rstrip("/") == LOGOUT
        if unsafe and origin is None and headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "cross-site request refused"
        if scope["type"] == "http" and path.startswith(FILE_ROUTES):
            return self._file_refusal(path)
        if scope["type"] == "http" and path.rstrip("/") == LOGIN_ROUTE and scope["method"] == "POST":
            return self._login_refusal(_client(scope))
        return None

    def _file_refusal(self, path: str) -> tuple[int, str] | None:
        requested = path.split("=", 1)[1] if "=" in path else path[len(FILE_ROUTES[1]) :]
        try:
            resolved = Path(requested).resolve()
        except (OSError, ValueError):
            return 404, "file not found"
        root = self.policy.data_root
        if resolved.is_relative_to(root) and not served_data_file(resolved, root):
            return 404, "file not found"
        return None

    def _login_refusal(self, client: str) -> tuple[int, str] | None:
        times, now = self.policy.failures[client], self.policy.clock()
        while times and now - times[0] > LOGIN_WINDOW:
            times.popleft()
        if len(times) >= LOGIN_FAILURES:
            wait = int(LOGIN_WINDOW - (now - times[0])) + 1
            return 429, f"too many failed logins from this address: try again in {wait} s"
        return None

    async def _read_body(
        self,
        scope: Scope,
        headers: dict[str, str],
        receive: Callable,
    ) -> tuple[bytes, tuple[int, str] | None]:
        limit = self.policy.save_limit if scope["path"].rstrip("/") == COMPONENT_SERVER else self.policy.body_limit
        too_big = 413, f"request body over {limit // 2**20} MB refused"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", (400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def _check_component_call(self, body: bytes) -> tuple[int, str] | None:
        try:
            call = orjson.loads(body)  # about 3x faster than json, and Gradio's own parser
            component_id, fn_name = call["component_id"], call["fn_name"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return 422, "a component_server call needs a JSON object with component_id and fn_name"
        if not self.policy.server_fn(component_id, fn_name):
            return 404, f"no server function {str(fn_name)[:60]!r} on component {str(component_id)[:20]!r}"
        return None

    # ----- sessions --------------------------------------------------------------------------------------------

    def _expire_session(self, headers: dict[str, str]) -> None:
        """Forget a login token `session_seconds` after its login (Gradio keeps tokens until logout)."""
        if self.policy.sessions is None or "cookie" not in headers:
            return
        tokens, names = self.policy.sessions()
        cookie = SimpleCookie()
        try:
            cookie.load(headers["cookie"])
        except Exception:  # noqa: BLE001 (a malformed cookie header: Gradio sees no session either)
            return
        now = self.policy.clock()
        if len(self.policy.issued) > len(tokens) + 100:  # logouts leave their tokens here: forget them
            for gone in set(self.policy.issued) - set(tokens):
                del self.policy.issued[gone]
        for name in names:
            token = cookie[name].value if name in cookie else None
            if token is None or token not in tokens:
                continue
            issued = self.policy.issued.setdefault(token, now)
            if now - issued > self.policy.session_seconds:
                tokens.pop(token, None)
                self.policy.issued.pop(token, None)

    def _sending(self, scope: Scope, send: Callable) -> Callable:
        """`send` adding the security headers, and noting logins (their tokens' time, failures per address)."""
        is_login = scope["type"] == "http" and scope["path"].rstrip("/") == LOGIN_ROUTE and scope["method"] == "POST"

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
                if is_login:
                    self._note_login(scope, message)
            await send(message)

        return sending

    def _note_login(self, scope: Scope, message: dict) -> None:
        client = _client(scope)
        if message["status"] != 200:
            self.policy.failures[client].append(self.policy.clock())
            return
        self.policy.failures.pop(client, None)
        for key, value in message["headers"]:
            if key.lower() == b"set-cookie":
                cookie = SimpleCookie()
                cookie.load(value.decode("latin-1"))
                for morsel in cookie.values():
                    self.policy.issued[morsel.value] = self.policy.clock()


def _client(scope: Scope) -> str:
    return (scope.get("client") or ("?", 0))[0]


def _replay(body: bytes, receive: Callable) -> Callable:
    """A `receive` that hands the app the body already read, then defers to the connection."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(scope: Scope, send: Callable, status: int, message: str) -> None:
    """Answer `status` with a plain-text (JSON for the API) `message`; a websocket is closed unaccepted."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = json.dumps({"detail": message}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
