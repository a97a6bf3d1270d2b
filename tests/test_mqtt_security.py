"""Login, TLS and connection settings against real mosquitto brokers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from async_support import wait_until
from mqtt_broker import PASSWORD, USERNAME, Mosquitto, free_port, link_options, running
from pydantic import SecretStr

from kwsd.config import MqttSettings
from kwsd.detection import Detection
from kwsd.errors import ConfigError
from kwsd.mqtt import MqttLink, MqttOptions, TlsOptions

DET = Detection("LIGHT_UP", "LIGHT UP", ("▁", "L", "IGHT", "▁UP"), 3.04, 3.2, 0.8, 80)


def settings(**values: Any) -> MqttSettings:
    """Validated `[mqtt]` settings for a test broker; `tls_x=...` sets `[mqtt.tls] x`."""
    tls = {key.removeprefix("tls_"): values.pop(key) for key in list(values) if key[:4] == "tls_"}
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 1883,
        "tls": tls,
        "base_topic": "kwsd/kitchen",
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.4,
    }
    base.update(values)
    return MqttSettings(**base)


def link_for(options: MqttOptions) -> MqttLink:
    return MqttLink(options, site="kitchen", model="m")


async def first_error(link: MqttLink) -> str:
    async with running(link, connect=False):
        await wait_until(lambda: link.status.last_error is not None, what="a connect error")
        assert not link.connected
        error = link.status.last_error
    assert error is not None
    return error


async def delivers(link: MqttLink, broker: Mosquitto) -> None:
    async with running(link), broker.subscriber(f"{link.topics.base}/detection") as sub:
        sent = link.publish_detection(DET)
        assert json.loads((await sub.next()).payload)["id"] == sent.id


# ----------------------------------------------------------------- login


async def test_password_file_login_works(
    mosquitto_auth: Mosquitto, mqtt_base_topic: str, tmp_path: Path
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")  # the newline editors add is not part of it
    options = MqttOptions.from_settings(
        MqttSettings(
            host="127.0.0.1",
            port=mosquitto_auth.port,
            username=USERNAME,
            password_file=secret,
            base_topic=mqtt_base_topic,
            client_id="kwsd-test-login",
        )
    )
    assert options.password == PASSWORD
    await delivers(link_for(options), mosquitto_auth)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_wrong_password_is_a_clear_error(
    mosquitto_auth: Mosquitto, mqtt_base_topic: str, protocol: str
) -> None:
    options = link_options(mosquitto_auth, mqtt_base_topic, password="wrong", protocol=protocol)
    error = await first_error(link_for(options))
    assert error == (
        f"MQTT broker 127.0.0.1:{mosquitto_auth.port} refused the login for user 'kwsd' "
        "(bad username or password): check mqtt.username / mqtt.password_file"
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_anonymous_on_a_login_broker_is_a_clear_error(
    mosquitto_auth: Mosquitto, mqtt_base_topic: str, protocol: str
) -> None:
    options = link_options(
        mosquitto_auth, mqtt_base_topic, username=None, password=None, protocol=protocol
    )
    error = await first_error(link_for(options))
    assert "not authorised" in error
    assert "set mqtt.username and mqtt.password_file" in error


async def test_broker_not_running_is_a_clear_error(mqtt_base_topic: str) -> None:
    port = free_port()
    options = MqttOptions(host="127.0.0.1", port=port, base_topic=mqtt_base_topic)
    error = await first_error(link_for(options))
    assert error.startswith(f"cannot connect to MQTT broker 127.0.0.1:{port}: connection refused")


# ------------------------------------------------------------------- TLS


async def test_tls_with_the_right_ca_works(mosquitto_tls: Mosquitto, mqtt_base_topic: str) -> None:
    assert mosquitto_tls.tls is not None
    options = MqttOptions.from_settings(
        settings(
            host="localhost",
            port=mosquitto_tls.port,
            tls_enabled=True,
            tls_ca_certs=mosquitto_tls.tls.ca,
            base_topic=mqtt_base_topic,
        )
    )
    await delivers(link_for(options), mosquitto_tls)


async def test_tls_client_certificate_works(mosquitto_tls: Mosquitto, mqtt_base_topic: str) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None and mosquitto_tls.mtls_port is not None
    options = link_options(
        mosquitto_tls,
        mqtt_base_topic,
        port=mosquitto_tls.mtls_port,
        tls=TlsOptions(
            enabled=True, ca_certs=tls.ca, certfile=tls.client_cert, keyfile=tls.client_key
        ),
    )
    link = link_for(options)
    async with running(link):
        assert link.connected


async def test_tls_missing_client_certificate_is_a_clear_error(
    mosquitto_tls: Mosquitto, mqtt_base_topic: str
) -> None:
    assert mosquitto_tls.tls is not None and mosquitto_tls.mtls_port is not None
    options = link_options(
        mosquitto_tls,
        mqtt_base_topic,
        port=mosquitto_tls.mtls_port,
        timeout_seconds=1.0,  # TLS 1.3 refuses the missing certificate only after the handshake
    )
    error = await first_error(link_for(options))
    assert error.startswith(
        f"TLS: MQTT broker localhost:{mosquitto_tls.mtls_port} requires a client certificate"
    )
    assert error.endswith("set mqtt.tls.certfile and mqtt.tls.keyfile")


async def test_tls_with_the_wrong_ca_is_a_clear_error(
    mosquitto_tls: Mosquitto, mqtt_base_topic: str
) -> None:
    assert mosquitto_tls.tls is not None
    other = mosquitto_tls.tls.other_ca
    options = link_options(
        mosquitto_tls, mqtt_base_topic, tls=TlsOptions(enabled=True, ca_certs=other)
    )
    error = await first_error(link_for(options))
    assert error.startswith(
        f"TLS: the certificate of MQTT broker localhost:{mosquitto_tls.port} could not be "
        f"verified with {other}"
    )
    assert "set mqtt.tls.ca_certs to the CA that signed the broker's certificate" in error


async def test_tls_hostname_mismatch_is_clear_and_insecure_skips_checks(
    mosquitto_tls: Mosquitto, mqtt_base_topic: str
) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None
    # The server certificate names "localhost" only, so dialling the IP must fail...
    strict = link_options(
        mosquitto_tls,
        mqtt_base_topic,
        host="127.0.0.1",
        tls=TlsOptions(enabled=True, ca_certs=tls.ca),
    )
    error = await first_error(link_for(strict))
    assert "is not issued for host '127.0.0.1'" in error
    assert "set mqtt.host to a name the certificate lists" in error
    # ...unless the user turns certificate checks off (even with a CA that does not fit).
    insecure = link_options(
        mosquitto_tls,
        mqtt_base_topic,
        host="127.0.0.1",
        tls=TlsOptions(enabled=True, ca_certs=tls.other_ca, insecure=True),
    )
    await delivers(link_for(insecure), mosquitto_tls)


async def test_tls_against_a_plain_port_is_a_clear_error(
    mosquitto: Mosquitto, mosquitto_tls: Mosquitto, mqtt_base_topic: str
) -> None:
    assert mosquitto_tls.tls is not None
    options = link_options(
        mosquitto, mqtt_base_topic, tls=TlsOptions(enabled=True, ca_certs=mosquitto_tls.tls.ca)
    )
    error = await first_error(link_for(options))
    assert "does not seem to speak TLS" in error


# ------------------------------------------------------ settings checks


def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    gone = tmp_path / "nope" / "ca.pem"
    gone.parent.mkdir()
    gone.write_text("removed after the config was loaded\n")
    validated = settings(tls_enabled=True, tls_ca_certs=gone)
    gone.unlink()
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_certs: file .*ca\.pem does not exist"):
        MqttOptions.from_settings(validated)
    options = MqttOptions(
        host="localhost", base_topic="kwsd/x", tls=TlsOptions(enabled=True, ca_certs=gone)
    )
    with pytest.raises(ConfigError, match="does not exist"):
        link_for(options)


def test_garbage_ca_file_is_a_config_error(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("this is not a certificate\n")
    with pytest.raises(ConfigError, match="is not a PEM CA certificate bundle"):
        MqttOptions.from_settings(settings(tls_enabled=True, tls_ca_certs=garbage))


def test_client_key_not_matching_is_a_config_error(mosquitto_tls: Mosquitto) -> None:
    tls = mosquitto_tls.tls
    assert tls is not None
    with pytest.raises(ConfigError, match="cannot be loaded as a PEM client certificate"):
        MqttOptions.from_settings(
            settings(
                tls_enabled=True,
                tls_ca_certs=tls.ca,
                tls_certfile=tls.client_cert,
                tls_keyfile=tls.server_key,
            )
        )


def test_no_host_means_no_broker() -> None:
    """Bad values never reach here: the config tests prove each one is refused on load."""
    for host in (None, " "):  # a blank host is no host, as docker-compose writes it
        with pytest.raises(ConfigError, match=r"mqtt\.host is not set"):
            MqttOptions.from_settings(settings(host=host))


def test_resolved_password_wins_over_the_file(tmp_path: Path) -> None:
    """kwsd.config reads password_file into `password` once, when it loads."""
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    validated = settings(username="u", password_file=secret)
    secret.unlink()
    options = MqttOptions.from_settings(validated)
    assert options.password == "from-file"


def test_settings_are_carried_over() -> None:
    options = MqttOptions.from_settings(
        settings(
            host="broker.lan",
            port=None,
            tls_enabled=True,
            username="kwsd",
            password=SecretStr("s3cret"),
            client_id="kwsd-kitchen",
            keepalive=30,
            protocol="3.1.1",
            qos=0,
            outbox_size=10,
        )
    )
    assert options.port == 8883  # the TLS default when no port is given
    assert (options.username, options.password, options.client_id) == (
        "kwsd",
        "s3cret",
        "kwsd-kitchen",
    )
    assert (options.keepalive, options.protocol, options.qos, options.outbox_size) == (
        30, "3.1.1", 0, 10,
    )  # fmt: skip
    assert "s3cret" not in repr(options)
