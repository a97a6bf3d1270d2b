"""What the MQTT link needs to know, independent of how the config file is laid out.

`MqttOptions` is a plain carrier: the values in it were validated once, by the `[mqtt]`
settings model (`kwsd.config.MqttSettings`), or are chosen by code that builds it
directly (tests, embedders). `from_settings` only loads the TLS files, so a certificate
that cannot be used fails with a ConfigError at start rather than in a retry loop that
can never succeed.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kwsd.errors import ConfigError
from kwsd.mqtt.commands import DEFAULT_MAX_COMMAND_BYTES

if TYPE_CHECKING:  # kwsd.config validates base topics with kwsd.mqtt.topics
    from kwsd.config import MqttSettings

MqttProtocol = Literal["5", "3.1.1"]


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS for the broker connection.

    `insecure` turns certificate verification off altogether (chain and host name),
    as Home Assistant's "ignore certificate validation" does: the connection is still
    encrypted but not authenticated, so it is for test brokers with ad-hoc certificates.
    """

    enabled: bool = False
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        """The client TLS context, or a ConfigError naming the setting at fault."""
        ca = _readable(self.ca_certs, "mqtt.tls.ca_certs")
        cert = _readable(self.certfile, "mqtt.tls.certfile")
        key = _readable(self.keyfile, "mqtt.tls.keyfile")
        if key is not None and cert is None:
            raise ConfigError("mqtt.tls.keyfile is set without mqtt.tls.certfile: set both")
        try:
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.tls.ca_certs {ca} is not a PEM CA certificate bundle: {exc}"
            ) from None
        if cert is not None:
            try:
                context.load_cert_chain(str(cert), str(key) if key else None)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"mqtt.tls.certfile {cert} / keyfile {key} cannot be loaded as a PEM client "
                    f"certificate and its private key: {exc}"
                ) from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """Connection and behaviour settings of one MqttLink."""

    host: str
    base_topic: str
    port: int = 1883
    tls: TlsOptions = field(default_factory=TlsOptions)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    keepalive: int = 60
    protocol: MqttProtocol = "5"
    qos: int = 1
    outbox_size: int = 1000
    outbox_max_age_seconds: float | None = 30.0  # None = events never expire
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    # Not in the config file: tuned for tests and for a prompt shutdown.
    timeout_seconds: float = 10.0  # CONNACK / SUBACK / PUBACK wait before the link is deemed dead
    shutdown_timeout_seconds: float = 2.0  # time to deliver what is queued before `offline`
    max_command_bytes: int = DEFAULT_MAX_COMMAND_BYTES
    inbox_messages: int = 4096  # received messages waiting for their handler
    inbox_bytes: int = 16 * 1024 * 1024

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: MqttSettings) -> MqttOptions:
        """Carry the validated `[mqtt]` settings over, with the TLS files loaded once.

        Raises ConfigError when no broker is configured (the caller then uses the stdout
        publisher) or when the TLS certificates or key cannot be loaded.
        """
        if settings.host is None:
            raise ConfigError("mqtt.host is not set: no MQTT broker is configured")
        tls = TlsOptions(
            enabled=settings.tls.enabled,
            ca_certs=settings.tls.ca_certs,
            certfile=settings.tls.certfile,
            keyfile=settings.tls.keyfile,
            insecure=settings.tls.insecure,
        )
        if tls.enabled:
            tls.ssl_context()  # fail now, not at the first connection attempt
        # kwsd.config has already put the content of password_file into `password`.
        password = settings.password.get_secret_value() if settings.password else None
        return cls(
            host=settings.host,
            port=settings.port or (8883 if tls.enabled else 1883),
            base_topic=settings.base_topic,
            tls=tls,
            username=settings.username,
            password=password,
            client_id=settings.client_id,
            keepalive=settings.keepalive,
            protocol=settings.protocol,
            qos=settings.qos,
            outbox_size=settings.outbox_size,
            outbox_max_age_seconds=settings.outbox_max_age_seconds or None,
            reconnect_min_seconds=settings.reconnect_min_seconds,
            reconnect_max_seconds=settings.reconnect_max_seconds,
        )


def _readable(path: Path | None, setting: str) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"{setting}: file {path} does not exist (or is not a file)")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    return path
