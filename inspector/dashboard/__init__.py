"""`inspector dashboard`: review flagged items, mark false alarms, see rates and drift, in the browser.

Torch-free (an edge box runs it from `inspector[runtime]`). Binds 127.0.0.1 unless told otherwise;
without a token it is read-only.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

from inspector.errors import InspectorError

log = logging.getLogger("inspector.dashboard")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def serve(store: str | None, host: str, port: int, config: Path | None) -> int:
    """Open the store, build the app and serve it until interrupted; user mistakes raise InspectorError."""
    import uvicorn

    from inspector.config.access import resolve
    from inspector.dashboard.app import create_app
    from inspector.dashboard.settings import default_retrain_dir, open_store

    settings = resolve(store, config)
    st = open_store(settings)
    retrain = settings.retrain_dir or default_retrain_dir(st, settings.store_url)
    loopback = _is_loopback(host)
    app = create_app(st, settings.token, retrain, trusted_hosts=LOOPBACK_NAMES if loopback else None)
    sock = _listen(host, port)
    if not loopback:
        log.warning(
            "dashboard listens on %s: anyone who can reach it can read it; put TLS in front "
            "before sending the review token over a network",
            host,
        )
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "dashboard on http://%s:%d/ (%s; retrain folder %s)",
        shown,
        sock.getsockname()[1],
        "reviews enabled" if settings.token else "read-only: no token set",
        retrain,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", server_header=False, proxy_headers=False))
    try:
        server.run(sockets=[sock])
    finally:
        st.close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """Bind here so a taken port is one clear line instead of a server traceback."""
    if not 0 <= port <= 65535:
        raise InspectorError(f"--port {port}: must be between 0 and 65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say they are TCP, and without
        # it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as e:
        raise InspectorError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --host/--port"
        ) from None
    sock.set_inheritable(True)
    return sock
