"""Serve the app's Blocks behind `RequestGuard`: Gradio mounted on a FastAPI app, run by uvicorn in a thread.

Gradio's `launch()` cannot put a middleware in front of its own CORS handling, which lets any origin read a
server bound to a network address; so the app is mounted (`gradio.mount_gradio_app`, Gradio's documented way
to embed it) in a parent whose Starlette `CORSMiddleware` allows no origin, and the guard wraps the parent.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from ..core.datasets.payload import MAX_SAVE_BYTES
from .guard import GuardPolicy, RequestGuard, is_loopback
from .users import UserFile

APP_LOCK = ".multimask-app.lock"  # in the data root: held by the app serving it
START_SECONDS = 120.0  # how long `serve` waits for the server to listen


@dataclass
class ServeOptions:
    """How to serve: `users` None serves without login; `allowed_hosts` are extra names clients may use."""

    host: str = "127.0.0.1"
    port: int = 7860
    users: UserFile | None = None
    allowed_hosts: tuple[str, ...] = ()
    session_hours: float = 12.0
    max_file_size: str = "64mb"
    allowed_paths: list[str] = field(default_factory=list)


@dataclass
class Served:
    """A running server: `url` works from other machines when bound to a network address; `close()` stops it."""

    url: str
    local_url: str
    policy: GuardPolicy
    server: uvicorn.Server
    thread: threading.Thread

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def network_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without a network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return None


def machine_names() -> frozenset[str]:
    """This machine's host names (short and fully qualified), lower case."""
    return frozenset(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)


def public_url(host: str, port: int) -> str:
    """A URL that reaches a server bound to `host` (from other machines unless it is bound to loopback)."""
    if host in ("0.0.0.0", "::", ""):
        host = network_address() or socket.getfqdn()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def claim_data_root(data_root: Path) -> tuple[IO | None, str | None]:
    """Hold the data root's app lock for this process's life: (the open lock file, None), or (None, the other
    holder's description) when another app process serves the same data root."""
    f = open(data_root / APP_LOCK, "a+")  # noqa: SIM115 (kept open: the lock lives as long as the file)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "another process"
        f.close()
        return None, other
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    return f, None


def _server_fn_check(demo: gr.Blocks):
    def server_fn(component_id, fn_name) -> bool:
        block = demo.blocks.get(component_id) if isinstance(component_id, int) else None
        fn = getattr(block, fn_name, None) if isinstance(fn_name, str) else None
        return fn is not None and getattr(fn, "_is_server_fn", False)

    return server_fn


def serve(demo: gr.Blocks, data_root: str | Path, options: ServeOptions) -> Served:
    """Start serving `demo` in a background thread; returns once it listens (RuntimeError if it cannot)."""
    parent = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    parent.add_middleware(CORSMiddleware, allow_origins=[])  # Gradio then adds no CORS headers of its own
    auth = options.users.check if options.users is not None else None
    gr.mount_gradio_app(
        parent,
        demo,
        path="",
        auth=auth,
        max_file_size=options.max_file_size,
        show_error=True,
        allowed_paths=list(options.allowed_paths),
        ssr_mode=False,
        auth_message="Log in with the user name and password given to you for this app.",
    )
    gradio_app = next(r.app for r in parent.routes if isinstance(r, Mount))
    sessions = None
    if auth is not None:

        def sessions():
            cid = gradio_app.cookie_id
            return gradio_app.tokens, (f"access-token-{cid}", f"access-token-unsecure-{cid}")

    allowed = {h.lower() for h in options.allowed_hosts} | set(machine_names())
    if not is_loopback(options.host) and options.host not in ("0.0.0.0", "::"):
        allowed.add(options.host.lower())
    policy = GuardPolicy(
        data_root=Path(data_root).resolve(),
        allowed_hosts=frozenset(allowed),
        save_limit=MAX_SAVE_BYTES,
        server_fn=_server_fn_check(demo),
        sessions=sessions,
        session_seconds=options.session_hours * 3600,
    )
    config = uvicorn.Config(
        RequestGuard(parent, policy),
        host=options.host,
        port=options.port,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="multimask-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"could not serve on {options.host}:{options.port} (is the port taken?)")
        time.sleep(0.05)
    local = "127.0.0.1" if options.host in ("0.0.0.0", "::") or is_loopback(options.host) else options.host
    return Served(
        url=public_url(options.host, options.port),
        local_url=f"http://{local}:{options.port}",
        policy=policy,
        server=server,
        thread=thread,
    )
