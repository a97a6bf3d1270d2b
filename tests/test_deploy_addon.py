"""The Home Assistant add-on: options.json → kwsd config, the Supervisor, bad options.

The sample options files in tests/addon_options/ are what the Supervisor writes to
/data/options.json. The end-to-end tests run `kwsd container addon` as the add-on's
run script does, against a stand-in Supervisor (a real HTTP server) and a real broker.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from deploy_support import (
    KwsdProcess,
    clean_env,
    fake_parec,
    speech_wav,
    wyoming_detection,
    wyoming_models,
)
from mqtt_broker import Mosquitto, free_port
from supervisor_standin import SUPERVISOR_TOKEN, StandInSupervisor

from kwsd.cli import main
from kwsd.cli.config import to_toml
from kwsd.config import load_settings
from kwsd.deploy.addon import (
    AddonOptions,
    AddonPaths,
    OptionsError,
    choose_broker,
    kwsd_config,
    parse_options,
    prepare,
)
from kwsd.deploy.probe import probe
from kwsd.deploy.supervisor import MqttService, Supervisor, SupervisorError

SAMPLES = Path(__file__).parent / "addon_options"


@pytest.fixture(scope="module")
def padded_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("speech"))


@pytest.fixture
def supervisor() -> Any:
    stand_in = StandInSupervisor(None)
    yield stand_in
    stand_in.close()


def _sample(name: str) -> AddonOptions:
    return parse_options((SAMPLES / name).read_text(encoding="utf-8"), name)


def _settings(tmp_path: Path, config: dict[str, Any]) -> Any:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return load_settings(path)


# ---------------------------------------------------------------------------- mapping


def test_minimal_options_serve_wyoming_with_the_keywords(tmp_path: Path) -> None:
    options = _sample("minimal.json")
    assert options.command == "wyoming"
    settings = _settings(tmp_path, kwsd_config(options, AddonPaths(tmp_path), None))
    assert [k.phrase for k in settings.keywords.items] == ["HEY COMPUTER"]
    assert settings.wyoming.enabled and settings.wyoming.uri == "tcp://0.0.0.0:10400"
    assert settings.mqtt.host is None
    assert settings.health.enabled and settings.data_dir == tmp_path
    assert settings.log.format == "console"


def test_full_options_map_every_setting(tmp_path: Path) -> None:
    options = _sample("full.json")
    assert options.command == "run"
    broker = choose_broker(options, None)
    assert broker is not None and broker.service.host == "192.0.2.10"
    paths = AddonPaths(tmp_path)
    config = kwsd_config(options, paths, broker)
    paths.work.mkdir()
    paths.mqtt_password.write_text("s3cret\n")
    settings = _settings(tmp_path, config)
    first, second = settings.keywords.items
    assert (first.phrase, first.threshold) == ("hey computer", None)
    assert (second.phrase, second.threshold, second.boost, second.display) == (
        "turn on the lights", 0.3, 2.5, "Lights on",
    )  # fmt: skip
    assert (settings.search.threshold, settings.search.boost) == (0.25, 1.5)
    assert settings.search.refractory_seconds == 2
    assert settings.audio.device == "alsa_input.usb-mic"
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.username) == (
        "192.0.2.10", 1884, "kwsd",
    )  # fmt: skip
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in to_toml(config)  # the password lives in its own file only
    assert settings.homeassistant.discovery is False
    assert settings.site_id == "living_room" and settings.mqtt.base_topic == "kwsd/living_room"
    assert settings.log.level == "debug"


def test_options_from_an_older_version_are_ignored_with_a_warning() -> None:
    assert _sample("older-version.json").unknown == ["legacy_option"]


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("bad-threshold.json", "option `keywords[0].threshold` = 1.5 is invalid: Input should "
         "be less than or equal to 1 (threshold: how sure the model must be"),
        ("bad-no-keywords.json", "option `keywords` = [] is invalid"),
        ("bad-missing-phrase.json", "option `keywords[0].phrase` is required"),
        ("bad-blank-phrase.json", "a keyword phrase must hold words"),
        ("bad-site-id.json", 'option `site_id` = "Living Room" is invalid'),
        ("bad-nothing-to-do.json", "`wyoming` and `microphone` are both off"),
        ("bad-port.json", "option `mqtt_port` = 70000 is invalid"),
        ("bad-log-level.json", "option `log_level` = \"verbose\" is invalid"),
        ("bad-not-json.json", "is not valid JSON"),
    ],
)  # fmt: skip
def test_bad_options_are_explained(
    sample: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(OptionsError, match=r".") as raised:
        _sample(sample).command  # noqa: B018 - the last check happens here
    assert expected in str(raised.value)
    # The same line from the command a user runs to check an options file.
    assert main(["container", "addon-config", str(SAMPLES / sample)]) == 3
    assert expected in capsys.readouterr().err


def test_a_password_never_shows_in_an_error() -> None:
    with pytest.raises(OptionsError) as raised:
        parse_options(json.dumps({"keywords": [{"phrase": "HI"}], "mqtt_password": 5}))
    assert "`mqtt_password` = ***" in str(raised.value) and "5" not in str(raised.value)


def test_addon_config_prints_a_config_kwsd_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kwsd.toml"
    assert main(["container", "addon-config", str(SAMPLES / "minimal.json"), str(out)]) == 0
    assert out.read_text().startswith("# The add-on runs: kwsd wyoming --config THIS_FILE")
    assert main(["config", "check", "--config", str(out)]) == 0
    assert 'phrase = "HEY COMPUTER"' in capsys.readouterr().out


def test_a_phrase_the_model_cannot_spell_is_rejected_by_the_model(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, supervisor: Any
) -> None:
    monkeypatch.setenv("KWSD_ASSETS", str(assets))
    text = (SAMPLES / "bad-spelling.json").read_text()
    with pytest.raises(OptionsError, match="not in the model's vocabulary"):
        prepare(text, "options.json", AddonPaths(tmp_path), Supervisor(supervisor.url, "t"))


# ---------------------------------------------------------------------------- Supervisor


def test_supervisor_mqtt_service_and_discovery() -> None:
    broker = {"host": "core-mosquitto", "port": 1883, "ssl": False, "protocol": "3.1.1",
              "username": "addons", "password": "pw"}  # fmt: skip
    stand_in = StandInSupervisor(broker)
    try:
        client = Supervisor(stand_in.url, SUPERVISOR_TOKEN)
        assert client.mqtt_service() == MqttService(
            "core-mosquitto", 1883, False, "addons", "pw", "3.1.1"
        )
        client.announce("wyoming", {"uri": "tcp://local-kwsd:10400"})
        assert stand_in.discovery == [
            {"service": "wyoming", "config": {"uri": "tcp://local-kwsd:10400"}}
        ]
        with pytest.raises(SupervisorError, match="HTTP 401 Invalid token"):
            Supervisor(stand_in.url, "wrong").mqtt_service()
        with pytest.raises(SupervisorError, match="SUPERVISOR_TOKEN is not set"):
            Supervisor(stand_in.url, None).mqtt_service()
    finally:
        stand_in.close()
    with pytest.raises(SupervisorError, match="cannot reach the Supervisor"):
        Supervisor(f"http://127.0.0.1:{free_port()}", "t").mqtt_service()


def test_without_a_broker_add_on_there_is_no_mqtt(supervisor: Any) -> None:
    client = Supervisor(supervisor.url, SUPERVISOR_TOKEN)
    assert client.mqtt_service() is None
    options = _sample("minimal.json").model_copy(update={"microphone": True})
    assert choose_broker(options, client) is None
    manual = options.model_copy(update={"mqtt_host": "10.0.0.2"})
    requests = supervisor.mqtt_requests
    broker = choose_broker(manual, client)
    assert broker is not None and broker.service.host == "10.0.0.2"
    assert supervisor.mqtt_requests == requests  # typed-in broker: the Supervisor is not asked


# ---------------------------------------------------------------------------- the add-on, running


def _addon(tmp_path: Path, env: dict[str, str], name: str) -> KwsdProcess:
    return KwsdProcess(
        ["container", "addon", "--data", str(tmp_path / "data")], env, tmp_path / f"{name}.log"
    )


def _write_options(tmp_path: Path, **changes: Any) -> None:
    options: dict[str, Any] = json.loads((SAMPLES / "minimal.json").read_text())
    options["keywords"] = [{"phrase": "hey computer"}, {"phrase": "turn on the lights"}]
    options.update(changes)
    (tmp_path / "data" / "options.json").write_text(json.dumps(options))


def test_addon_bad_first_options_wait_in_an_error_state(
    assets: Path, tmp_path: Path, supervisor: Any
) -> None:
    env = clean_env(tmp_path, assets, SUPERVISOR_URL=supervisor.url,
                    SUPERVISOR_TOKEN=SUPERVISOR_TOKEN)  # fmt: skip
    _write_options(tmp_path, keywords=[{"phrase": "hey computer", "threshold": 1.5}])
    child = _addon(tmp_path, env, "bad")
    try:
        log = child.wait_for_log("The add-on is waiting", within=60)
        (line,) = [x for x in log.splitlines() if "keywords[0].threshold" in x]
        assert "[error  ] kwsd add-on: the add-on options are invalid: option " in line
        time.sleep(1)
        assert child.running()  # no exit, so no restart loop
        (problem,) = probe(tmp_path / "tmp" / "kwsd-container-health.json")
        assert "keywords[0].threshold" in problem
        assert child.stop(within=5) == 0
    finally:
        child.close()


def test_addon_good_options_announce_wyoming_then_bad_ones_fall_back(
    assets: Path, tmp_path: Path, padded_speech: Path, supervisor: Any
) -> None:
    port = free_port()
    env = clean_env(tmp_path, assets, SUPERVISOR_URL=supervisor.url,
                    SUPERVISOR_TOKEN=SUPERVISOR_TOKEN,
                    KWSD_WYOMING__URI=f"tcp://127.0.0.1:{port}")  # fmt: skip
    _write_options(tmp_path)
    child = _addon(tmp_path, env, "good")
    try:
        names = wyoming_models(port, child.running, lambda: child.log)
        assert names == ["hey_computer", "turn_on_the_lights"]
        assert wyoming_detection(port, padded_speech) == "hey_computer"
        deadline = time.monotonic() + 20
        while not supervisor.discovery and time.monotonic() < deadline:
            time.sleep(0.1)
        (message,) = supervisor.discovery
        assert message["service"] == "wyoming"
        assert message["config"]["uri"].endswith(f":{port}")
        assert child.stop() == 0
    finally:
        child.close()
    last_good = tmp_path / "data" / "kwsd-addon" / "last-good-options.json"
    assert json.loads(last_good.read_text())["keywords"][1]["phrase"] == "turn on the lights"

    _write_options(tmp_path, keywords=[{"phrase": "turn on light 2"}])
    child = _addon(tmp_path, env, "fallback")
    try:
        log = child.wait_for_log("starting with the last good options", within=60)
        assert "characters '2' are not in the model's vocabulary" in log
        assert wyoming_models(port, child.running, lambda: child.log) == [
            "hey_computer", "turn_on_the_lights",
        ]  # fmt: skip
        assert child.stop() == 0
    finally:
        child.close()


def test_addon_microphone_publishes_to_the_supervisors_broker(
    assets: Path, tmp_path: Path, padded_speech: Path, mosquitto_auth: Mosquitto
) -> None:
    """`microphone: true`: PulseAudio audio (parec) → kwsd run → the Supervisor's broker."""
    stand_in = StandInSupervisor({
        "host": mosquitto_auth.host, "port": mosquitto_auth.port, "ssl": False,
        "protocol": "5", "username": mosquitto_auth.username,
        "password": mosquitto_auth.password,
    })  # fmt: skip
    bin_dir = tmp_path / "bin"
    fake_parec(bin_dir, padded_speech)
    received: list[tuple[str, bytes]] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscriber.username_pw_set(mosquitto_auth.username, mosquitto_auth.password)
    subscriber.on_message = lambda _c, _u, msg: received.append((msg.topic, msg.payload))
    subscriber.on_connect = lambda client, *_: client.subscribe("kwsd/addon-test/#")
    subscriber.connect(mosquitto_auth.host, mosquitto_auth.port)
    subscriber.loop_start()
    env = clean_env(
        tmp_path, assets, SUPERVISOR_URL=stand_in.url, SUPERVISOR_TOKEN=SUPERVISOR_TOKEN,
        PATH=f"{bin_dir}:{os.environ['PATH']}", PULSE_SERVER="unix:/run/audio/pulse.sock",
        KWSD_HEALTH__PORT=str(free_port()),
    )  # fmt: skip
    _write_options(tmp_path, microphone=True, wyoming=False, site_id="addon-test")
    child = _addon(tmp_path, env, "mic")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            t.endswith("/detection") for t, _ in received
        ):
            assert child.running(), child.log
            time.sleep(0.2)
        detections = [json.loads(p) for t, p in received if t.endswith("/detection")]
        assert detections and detections[0]["keyword"] == "HEY COMPUTER", child.log
        assert "MQTT broker 127.0.0.1" in child.log and "the Supervisor's MQTT service" in child.log
        password = tmp_path / "data" / "kwsd-addon" / "mqtt-password"
        assert stat.S_IMODE(password.stat().st_mode) == 0o600
        assert mosquitto_auth.password not in (tmp_path / "data/kwsd-addon/config.toml").read_text()
        assert child.stop() == 0
    finally:
        child.close()
        subscriber.loop_stop()
        subscriber.disconnect()
        stand_in.close()
