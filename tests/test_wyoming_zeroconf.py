"""Zeroconf: Home Assistant discovers kwsd's Wyoming server as `_wyoming._tcp`.

Multicast DNS works on this machine's loopback interface, so the tests announce on
127.0.0.1 only and browse there with python-zeroconf, the library Home Assistant's
zeroconf integration uses; then they connect to the discovered address and port with
the `wyoming` client and ask for `info`, as Home Assistant's config flow does. Service
names carry a random part: other test runs on this machine share the loopback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from daemon_support import make_settings, running
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from kwsd.config import load_settings
from kwsd.daemon import Daemon
from kwsd.errors import ConfigError
from kwsd.wyoming.zeroconf import SERVICE_TYPE, ZeroconfAnnouncer, instance_name


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    found = Browser(zc)
    await found.start()
    try:
        yield found
    finally:
        await found.close()


class Browser:
    """What a `_wyoming._tcp` browser on loopback sees come and go."""

    def __init__(self, zc: AsyncZeroconf) -> None:
        self.zc = zc
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self._changed = asyncio.Event()  # set by the handler (called on the event loop)
        self._browser: AsyncServiceBrowser | None = None

    async def start(self) -> None:
        def changed(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change is ServiceStateChange.Added:
                self.added.add(name)
            elif state_change is ServiceStateChange.Removed:
                self.removed.add(name)
            self._changed.set()

        self._browser = AsyncServiceBrowser(self.zc.zeroconf, SERVICE_TYPE, handlers=[changed])

    async def wait(self, names: set[str], name: str, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while name not in names:
                self._changed.clear()
                await self._changed.wait()

    async def resolve(self, name: str) -> AsyncServiceInfo:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        assert await info.async_request(self.zc.zeroconf, 3000), f"{name} did not resolve"
        return info

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        await self.zc.async_close()


def unique_name() -> str:
    return f"kwsd-test-{uuid.uuid4().hex[:8]}"


async def test_the_daemon_is_discovered_and_answers_describe(
    tmp_path: Path, assets: Path, speech: Path, browser: Browser
) -> None:
    name = unique_name()
    settings = make_settings(
        tmp_path,
        assets,
        speech,
        **{
            "audio.realtime": True,
            "audio.loop": True,
            "keywords.phrases": ["HEY COMPUTER"],
            "wyoming.enabled": True,
            "wyoming.uri": "tcp://127.0.0.1:0",
            "wyoming.zeroconf_name": name,
        },
    )
    daemon = Daemon(settings, install_signal_handlers=False)
    full_name = f"{name}.{SERVICE_TYPE}"
    async with running(daemon):
        assert daemon.wyoming is not None and daemon.wyoming.bound is not None
        await browser.wait(browser.added, full_name)
        info = await browser.resolve(full_name)
        assert info.port == daemon.wyoming.bound[1]
        assert info.parsed_addresses() == ["127.0.0.1"]
        assert info.properties[b"program"] == b"kwsd"
        assert info.properties[b"version"]

        # What Home Assistant's config flow does with a discovered service.
        async with AsyncTcpClient(info.parsed_addresses()[0], info.port) as client:
            await client.write_event(Describe().event())
            async with asyncio.timeout(10):
                event = await client.read_event()
        assert event is not None and Info.is_type(event.type)
        assert [m.name for m in Info.from_event(event).wake[0].models] == ["hey_computer"]
    # A clean stop says goodbye: the entry goes away at once, not after its TTL.
    await browser.wait(browser.removed, full_name, within=5)


async def test_the_announcer_alone_with_the_right_port_and_properties(
    browser: Browser,
) -> None:
    name = unique_name()
    announcer = ZeroconfAnnouncer(name, version="1.2.3")
    announcer.start(("127.0.0.1", 10401))
    try:
        async with asyncio.timeout(10):
            await announcer.registered.wait()
        full_name = f"{name}.{SERVICE_TYPE}"
        await browser.wait(browser.added, full_name)
        info = await browser.resolve(full_name)
        assert (info.port, info.parsed_addresses()) == (10401, ["127.0.0.1"])
        assert info.properties == {b"program": b"kwsd", b"version": b"1.2.3"}
        assert info.server is not None and info.server.endswith(".local.")
    finally:
        await announcer.close()
    await browser.wait(browser.removed, full_name, within=5)


async def test_a_failed_announcement_is_a_warning_not_a_crash() -> None:
    # 203.0.113.0/24 is reserved for documentation: no interface has it, so binding
    # mDNS there fails before anything is sent.
    announcer = ZeroconfAnnouncer(unique_name(), version="1")
    with structlog.testing.capture_logs() as logs:
        announcer.start(("203.0.113.7", 10400))
        await asyncio.sleep(0.5)
        await announcer.close()
    assert not announcer.registered.is_set()
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert "zeroconf announcement failed" in warning["event"]
    assert "wyoming.zeroconf = false" in warning["event"]


def test_settings_switch_it_off_and_unix_sockets_have_none(tmp_path: Path) -> None:
    on = load_settings(None, {"wyoming.enabled": True, "site_id": "kitchen"})
    announcer = ZeroconfAnnouncer.from_settings(on.wyoming, version="1")
    assert announcer is not None and announcer.name == "kwsd-kitchen"
    off = load_settings(None, {"wyoming.zeroconf": False})
    assert ZeroconfAnnouncer.from_settings(off.wyoming, version="1") is None
    unix = load_settings(None, {"wyoming.uri": f"unix://{tmp_path}/kwsd.sock"})
    assert ZeroconfAnnouncer.from_settings(unix.wyoming, version="1") is None
    with pytest.raises(ConfigError, match="zeroconf_host must be an IP address"):
        load_settings(None, {"wyoming.zeroconf_host": "my-nas"})


def test_instance_names_fit_one_dns_label() -> None:
    assert instance_name("kwsd-kitchen") == "kwsd-kitchen"
    assert instance_name("living.room") == "living-room"
    assert len(instance_name("ü" * 100).encode()) <= 63
