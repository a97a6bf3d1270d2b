"""`kwsd wyoming`: serve the configured keywords as Wyoming wake words (Home Assistant).

A standalone server for users who only want kwsd as Assist's wake-word engine; the
daemon (`kwsd run`) serves the same protocol beside MQTT when `wyoming.enabled` is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from kwsd import __version__
from kwsd.cli.common import (
    add_keyword_args,
    add_model_args,
    load_spotter_and_keywords,
    settings_for,
)
from kwsd.wyoming.engine import DecodeOptions
from kwsd.wyoming.limits import ConnectionLimits
from kwsd.wyoming.server import WyomingServer, parse_uri
from kwsd.wyoming.zeroconf import ZeroconfAnnouncer


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wyoming",
        help="serve keywords as Wyoming wake words (Home Assistant Assist)",
        description="Run a Wyoming wake-word server: Home Assistant discovers it (Settings → "
        "Devices & services → Discovered; or Add integration → Wyoming Protocol, host and "
        "port of this machine) and then offers every keyword as a wake word.",
    )
    p.add_argument(
        "--uri",
        help="where to listen: tcp://HOST:PORT or unix:///path "
        "(default: wyoming.uri, tcp://0.0.0.0:10400)",
    )
    p.add_argument(
        "--zeroconf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="announce the server on the local network so Home Assistant discovers it "
        "(default: wyoming.zeroconf, on)",
    )
    p.add_argument(
        "--refractory",
        type=float,
        metavar="SECONDS",
        help="ignore repeats of a keyword within this time (default: search.refractory_seconds)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="decode in N processes, one core each, for many satellites; 0 = one thread, "
        "auto = one per core (default: wyoming.workers, 0)",
    )
    add_keyword_args(p)
    add_model_args(p)
    p.set_defaults(func=_run)


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number of processes (0 = one thread) or auto"
        ) from None


def _run(args: argparse.Namespace) -> int:
    settings = settings_for(
        args,
        wyoming__uri=args.uri,
        wyoming__zeroconf=args.zeroconf,
        search__refractory_seconds=args.refractory,
        wyoming__workers=args.workers,
    )
    parse_uri(settings.wyoming.uri)  # a bad uri fails before the model loads
    settings, spotter, keywords = load_spotter_and_keywords(
        args,
        "pass --keywords PHRASE, --keywords-file F, or set keywords.phrases in config.toml",
        settings,
    )
    for warning in keywords.warnings:
        print(f"kwsd: warning: {warning}", file=sys.stderr)
    server = WyomingServer(
        spotter,
        lambda: keywords,
        version=__version__,
        refractory_seconds=settings.search.refractory_seconds,
        limits=ConnectionLimits.from_settings(settings.wyoming),
        announcer=ZeroconfAnnouncer.from_settings(settings.wyoming, version=__version__),
        decoding=DecodeOptions.from_settings(settings.wyoming, settings.log, spotter),
    )
    asyncio.run(_serve(server, settings.wyoming.uri))
    return 0


async def _serve(server: WyomingServer, uri: str) -> None:
    await server.start(uri)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve_forever())
    try:
        await stop.wait()
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await server.close()
