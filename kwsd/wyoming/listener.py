"""The Wyoming server's listening sockets and its accept loop.

kwsd accepts connections itself instead of through `asyncio.start_server`, because
what asyncio does when the process runs out of file descriptors is the opposite of
what a daemon needs: it logs a full traceback for every pending connection on every
loop tick and schedules one more retry per error, which turned 1,100 idle connections
into 350,000 log lines in 87 s. Here an accept that fails for lack of resources is
logged once and then summarised (`RepeatedWarning`), and accepting pauses with a
growing delay (up to `MAX_RETRY_SECONDS`) until it works again; connections that
arrive meanwhile wait in the kernel's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from kwsd.wyoming.limits import RepeatedWarning

log = structlog.get_logger("kwsd.wyoming")

BACKLOG: Final = 128
MIN_RETRY_SECONDS: Final = 0.05
MAX_RETRY_SECONDS: Final = 1.0
# The peer gave up between the kernel's handshake and our accept(): nothing to do.
_PEER_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN})

ConnectionHandler = Callable[[socket.socket, str], None]


def bind_tcp(addresses: list[tuple[int, tuple[str, int]]]) -> list[socket.socket]:
    """One listening socket per resolved address (as asyncio.start_server would)."""
    sockets: list[socket.socket] = []
    try:
        for family, sockaddr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Each family gets its own socket, as with asyncio.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def resolve(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    unique: dict[tuple[int, tuple[str, int]], None] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        unique[(family, (str(sockaddr[0]), int(sockaddr[1])))] = None
    return list(unique)


def bind_unix(path: Path) -> socket.socket:
    if path.is_socket():
        path.unlink()  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def peer_name(conn: socket.socket, address: object) -> str:
    if conn.family == socket.AF_INET and isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    if conn.family == socket.AF_INET6 and isinstance(address, tuple):
        return f"[{address[0]}]:{address[1]}"
    return "unix socket"


class Acceptor:
    """Accepts on every listening socket and hands each connection to `handler`."""

    def __init__(self, sockets: list[socket.socket], handler: ConnectionHandler) -> None:
        self.sockets = sockets
        self.handler = handler
        self.errors = RepeatedWarning(
            "Wyoming cannot accept connections: out of file descriptors or memory",
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for sock in self.sockets:
                group.create_task(self._accept_forever(sock))

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        delay = MIN_RETRY_SECONDS
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _PEER_GONE:
                    continue
                self.errors.record(
                    error=exc.strerror or str(exc),
                    retry_seconds=delay,
                    fix="raise the open-file limit (LimitNOFILE=, `ulimit -n`) or lower "
                    "wyoming.max_connections",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            delay = MIN_RETRY_SECONDS
            self.errors.resolved("Wyoming accepts connections again")
            try:
                self.handler(conn, peer_name(conn, address))
            except Exception:  # a bug in one hand-over must not stop the server
                log.exception("Wyoming connection could not be started")
                conn.close()

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
