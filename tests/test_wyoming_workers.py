"""The Wyoming server's decode processes (`wyoming.workers`): real processes, each with
its own model, fed by the event loop; the client is the `wyoming` package, the audio
espeak-ng speech through the stand-in encoder."""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import signal
from pathlib import Path

import pytest
import structlog
from wyoming.audio import AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming_support import RATE, WIDTH, answers, espeak_pcm, send_audio, utterance

from kwsd.config import Settings
from kwsd.config.schema import LogSettings, WyomingSettings
from kwsd.errors import ConfigError, ModelError
from kwsd.keywords import KeywordSet
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.engine import DecodeOptions
from kwsd.wyoming.server import WyomingServer
from kwsd.wyoming.shards import ProcessShard, usable_cores

HIT = ["hey_computer", "turn_on_the_lights"]


@pytest.fixture(scope="module")
def spotter(assets: Path) -> KeywordSpotter:
    return KeywordSpotter.from_assets(assets)


@pytest.fixture(scope="module")
def keywords(spotter: KeywordSpotter) -> KeywordSet:
    return spotter.compile(["HEY COMPUTER", "TURN ON THE LIGHTS", "GOOD NIGHT"])


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("speech") / "s.wav"
    return espeak_pcm("hey computer, turn on the lights", path)


def _processes(spotter: KeywordSpotter, workers: int) -> DecodeOptions:
    return DecodeOptions(workers=workers, load=spotter.loader())


async def test_connections_spread_over_decode_processes_get_what_each_gets_alone(
    spotter: KeywordSpotter, keywords: KeywordSet, speech: bytes
) -> None:
    server = WyomingServer(spotter, lambda: keywords, version="1", decoding=_processes(spotter, 2))
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None and server.engine is not None
    try:
        shards = server.engine.shards
        assert all(isinstance(s, ProcessShard) for s in shards)
        pids = {s.pid for s in shards if isinstance(s, ProcessShard)}
        assert len(pids) == 2 and os.getpid() not in pids
        clients = [AsyncTcpClient(*server.bound) for _ in range(4)]
        for client in clients:
            await client.connect()
        sounds = [speech, bytes(len(speech)), speech, bytes(len(speech))]
        results = await asyncio.gather(
            *(utterance(c, pcm) for c, pcm in zip(clients, sounds, strict=True))
        )
        # Two connections on each process: a connection stays with one.
        on = [s.shard for s in server.engine.streams]
        assert sorted(on.count(s) for s in shards) == [2, 2]
        # A second utterance on each connection, after the first.
        again = await asyncio.gather(
            *(utterance(c, pcm) for c, pcm in zip(clients, sounds, strict=True))
        )
        for client in clients:
            await client.disconnect()
    finally:
        await server.close()
    expected = [HIT, ["not-detected"], HIT, ["not-detected"]]
    assert results == expected
    assert again == expected
    for pid in pids:  # the decode processes ended with the server
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_killed_decode_process_costs_one_utterance_and_is_replaced(
    spotter: KeywordSpotter, keywords: KeywordSet, speech: bytes
) -> None:
    server = WyomingServer(spotter, lambda: keywords, version="1", decoding=_processes(spotter, 1))
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None and server.engine is not None
    engine = server.engine
    (shard,) = engine.shards
    assert isinstance(shard, ProcessShard) and shard.pid is not None
    try:
        async with AsyncTcpClient(*server.bound) as client:
            assert await utterance(client, speech) == HIT
            with structlog.testing.capture_logs() as logs:
                # Mid-utterance (the decode process holds the stream: the ping's pong
                # comes after the audio before it is searched), the process dies...
                half = len(speech) // 2 // WIDTH * WIDTH
                await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=1).event())
                await send_audio(client, speech[:half])
                await answers(client)
                os.kill(shard.pid, signal.SIGKILL)  # out of memory, or killed by hand
                # ...so the utterance fails with an error the client can show...
                await send_audio(client, speech[half:])
                await client.write_event(AudioStop().event())
                assert await answers(client) == ["error:decoding-failed"]
                # ...and the same connection decodes again on a new process.
                # ...and the same connection decodes again on a new process (its
                # audio waits in the new one's queue while it loads the model).
                assert await utterance(client, speech) == HIT
                (replacement,) = engine.shards
                assert isinstance(replacement, ProcessShard)
                assert replacement.pid not in (None, shard.pid)
        async with AsyncTcpClient(*server.bound) as fresh:  # and new connections too
            assert await utterance(fresh, speech) == HIT
    finally:
        await server.close()
    stopped = [e for e in logs if e["event"].startswith("Wyoming decode process stopped")]
    assert stopped and "exit code -9" in stopped[0]["reason"]


async def test_a_model_the_decode_processes_cannot_load_fails_start_with_the_reason(
    spotter: KeywordSpotter, keywords: KeywordSet, tmp_path: Path
) -> None:
    missing = tmp_path / "no-model-here"
    load = functools.partial(KeywordSpotter.from_model_dir, missing)
    server = WyomingServer(
        spotter, lambda: keywords, version="1", decoding=DecodeOptions(workers=1, load=load)
    )
    with pytest.raises(ModelError, match="could not start") as raised:
        await server.start("tcp://127.0.0.1:0")
    assert str(missing) in str(raised.value)
    await server.close()


def test_the_loader_pickles_and_loads_the_same_model(spotter: KeywordSpotter) -> None:
    load = spotter.loader()
    assert load is not None
    again = pickle.loads(pickle.dumps(load))()
    assert again.bundle == spotter.bundle
    assert again.backend_options == spotter.backend_options
    assert again.stand_in == spotter.stand_in
    # A hand-built backend has no files to load again.
    assert spotter.with_backend(spotter.backend).loader() is None


def test_workers_setting(spotter: KeywordSpotter) -> None:
    logging = LogSettings()
    assert DecodeOptions.from_settings(WyomingSettings(), logging, spotter).workers == 0
    auto = DecodeOptions.from_settings(WyomingSettings(workers="auto"), logging, spotter)
    assert auto.workers == usable_cores() >= 1
    assert auto.load is not None
    with pytest.raises(ConfigError, match=r"set wyoming.workers = 0"):
        DecodeOptions.from_settings(
            WyomingSettings(workers=2), logging, spotter.with_backend(spotter.backend)
        )
    for bad in (-1, 65):
        with pytest.raises(
            ValueError, match=r'workers must be 0 \(one thread\), 1 to 64 or "auto"'
        ):
            Settings.model_validate({"wyoming": {"workers": bad}})
