"""Announcing the Wyoming server on the local network (mDNS / DNS-SD, `_wyoming._tcp`).

Home Assistant browses for `_wyoming._tcp.local.` and lists every server it finds
under Settings → Devices & services → Discovered; confirming one adds the Wyoming
integration with that address and port, as for wyoming-openwakeword. Home Assistant
keys the entry on the announced service name plus the `info` program name, so the name
must stay the same across restarts (the default, `kwsd-<site_id>`, does).

Registering first probes the network for a clash with another host's name (about a
second), so it runs in the background and never delays serving; a failure (no
multicast route, port 5353 unusable) is a warning, never a reason to stop. A second
kwsd with the same name gets a numbered variant instead of an error. On shutdown a
goodbye packet removes the entry at once instead of after its time-to-live.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from typing import TYPE_CHECKING, Final

import structlog
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

if TYPE_CHECKING:
    from kwsd.config import WyomingSettings

log = structlog.get_logger("kwsd.wyoming")

SERVICE_TYPE: Final = "_wyoming._tcp.local."
MDNS_GROUP: Final = "224.0.0.251"
MAX_NAME_BYTES: Final = 63  # one DNS label
CLOSE_TIMEOUT_SECONDS: Final = 1.0
_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})


def instance_name(name: str) -> str:
    """`name` as one DNS-SD instance label: no dots, at most 63 bytes of UTF-8."""
    label = name.replace(".", "-").strip() or "kwsd"
    while len(label.encode("utf-8")) > MAX_NAME_BYTES:
        label = label[:-1]
    return label


def host_label() -> str:
    """This machine's name as an mDNS host name (`livingroom-pi.local.`)."""
    first = socket.gethostname().split(".")[0]
    return (re.sub(r"[^A-Za-z0-9-]", "-", first).strip("-") or "kwsd")[:MAX_NAME_BYTES]


def main_ipv4_address() -> str | None:
    """The IPv4 address this machine would send multicast from (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((MDNS_GROUP, 5353))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address in _WILDCARDS else address


class ZeroconfAnnouncer:
    """Announces one Wyoming server; `start()` in the background, `close()` says goodbye."""

    def __init__(self, name: str, *, version: str, host: str | None = None) -> None:
        self.name = instance_name(name)
        self.version = version
        self.host = host  # the address to announce; None = from the listening address
        self.info: AsyncServiceInfo | None = None
        self.registered = asyncio.Event()  # set once the announcement went out
        self._zeroconf: AsyncZeroconf | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: WyomingSettings, *, version: str) -> ZeroconfAnnouncer | None:
        """The announcer `settings` ask for, or None (switched off, or a Unix socket)."""
        if not settings.zeroconf or not settings.uri.startswith("tcp://"):
            return None
        return cls(settings.zeroconf_name, version=version, host=settings.zeroconf_host)

    def start(self, bound: tuple[str, int]) -> None:
        """Announce the server listening at `bound` (host, port); returns at once."""
        self._task = asyncio.create_task(self._register(*bound), name="kwsd-zeroconf")

    def _where(self, bound_host: str) -> tuple[str, list[str] | InterfaceChoice, IPVersion] | None:
        if self.host is not None:
            address: str | None = self.host
        elif bound_host in _WILDCARDS:
            address = main_ipv4_address()
        else:
            address = bound_host
        if address is None:
            return None
        ip = ipaddress.ip_address(address)
        if ip.version == 6:
            return address, InterfaceChoice.All, IPVersion.All
        if self.host is None and bound_host not in _WILDCARDS:
            # Listening on one address: announce there only (127.0.0.1 stays on loopback).
            return address, [address], IPVersion.V4Only
        return address, InterfaceChoice.All, IPVersion.V4Only

    async def _register(self, bound_host: str, port: int) -> None:
        where = self._where(bound_host)
        if where is None:
            log.warning(
                "zeroconf: cannot tell which address to announce; Home Assistant will not "
                "discover kwsd (add it by host and port, or set wyoming.zeroconf_host)"
            )
            return
        address, interfaces, ip_version = where
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.name}.{SERVICE_TYPE}",
            addresses=[ipaddress.ip_address(address).packed],
            port=port,
            properties={"program": "kwsd", "version": self.version},
            server=f"{host_label()}.local.",
        )
        try:
            self._zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=ip_version)
            announced = await self._zeroconf.async_register_service(info, allow_name_change=True)
            await announced
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "zeroconf announcement failed; Home Assistant will not discover kwsd (add "
                "it by host and port, or set wyoming.zeroconf = false)",
                error=str(exc) or type(exc).__name__,
            )
            return
        self.info = info
        self.registered.set()
        log.info(
            "Wyoming server announced over zeroconf",
            service=info.name,
            address=address,
            port=port,
        )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        zc, self._zeroconf = self._zeroconf, None
        if zc is None:
            return
        # Closing unregisters the service first: that sends the goodbye.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await zc.async_close()
