"""What the MQTT link needs to know, independent of how the config file is laid out.

`MqttOptions.from_settings` reads the `[mqtt]` settings model by attribute name, so the
link does not depend on the config module's classes, and checks everything that can be
checked before the first connection (files, combinations), failing with a ConfigError
at start rather than a retry loop that can never succeed.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kwsd.errors import ConfigError
from kwsd.mqtt.commands import DEFAULT_MAX_COMMAND_BYTES
from kwsd.mqtt.topics import validate_base_topic

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
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    # Not in the config file: tuned for tests and for a prompt shutdown.
    timeout_seconds: float = 10.0  # CONNACK / SUBACK / PUBACK wait before the link is deemed dead
    shutdown_timeout_seconds: float = 2.0  # time to deliver what is queued before `offline`
    max_command_bytes: int = DEFAULT_MAX_COMMAND_BYTES

    def __post_init__(self) -> None:
        validate_base_topic(self.base_topic)
        if not self.host:
            raise ConfigError("mqtt.host is empty: set it to the broker's name or address")
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port {self.port} is not a TCP port (1-65535)")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"mqtt.qos {self.qos} is not 0, 1 or 2")
        if self.protocol not in ("5", "3.1.1"):
            raise ConfigError(f'mqtt.protocol {self.protocol!r} is not "5" or "3.1.1"')
        if self.outbox_size < 1:
            raise ConfigError("mqtt.outbox_size must be at least 1")
        if not 0 < self.reconnect_min_seconds <= self.reconnect_max_seconds:
            raise ConfigError(
                "mqtt.reconnect_min_seconds must be > 0 and <= mqtt.reconnect_max_seconds"
            )
        if not 0 <= self.keepalive <= 65535:
            raise ConfigError(f"mqtt.keepalive {self.keepalive} must be 0-65535 seconds")
        if self.password is not None and self.username is None:
            raise ConfigError("mqtt.password is set but mqtt.username is not: set both")

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: Any) -> MqttOptions:
        """Build from the `[mqtt]` settings model (kwsd.config.MqttSettings).

        Raises ConfigError when no broker is configured (the caller then uses the
        stdout publisher) or when a file it names is missing.
        """
        host = getattr(settings, "host", None)
        if not host:
            raise ConfigError("mqtt.host is not set: no MQTT broker is configured")
        tls_settings = getattr(settings, "tls", None)
        tls = TlsOptions(
            enabled=bool(getattr(tls_settings, "enabled", False)),
            ca_certs=_path(getattr(tls_settings, "ca_certs", None)),
            certfile=_path(getattr(tls_settings, "certfile", None)),
            keyfile=_path(getattr(tls_settings, "keyfile", None)),
            insecure=bool(getattr(tls_settings, "insecure", False)),
        )
        if not tls.enabled and (tls.ca_certs or tls.certfile or tls.keyfile):
            raise ConfigError(
                "mqtt.tls.ca_certs/certfile/keyfile are set but mqtt.tls.enabled is false: "
                "set mqtt.tls.enabled = true (or remove them) so the connection is not "
                "silently unencrypted"
            )
        if tls.enabled:
            tls.ssl_context()  # fail now, not at the first connection attempt
        port = getattr(settings, "port", None)
        return cls(
            host=str(host),
            port=int(port) if port else (8883 if tls.enabled else 1883),
            base_topic=str(settings.base_topic),
            tls=tls,
            username=getattr(settings, "username", None) or None,
            password=_password(settings),
            client_id=getattr(settings, "client_id", None) or None,
            keepalive=int(getattr(settings, "keepalive", 60)),
            protocol=str(getattr(settings, "protocol", "5")),  # type: ignore[arg-type]
            qos=int(getattr(settings, "qos", 1)),
            outbox_size=int(getattr(settings, "outbox_size", 1000)),
            reconnect_min_seconds=float(getattr(settings, "reconnect_min_seconds", 1.0)),
            reconnect_max_seconds=float(getattr(settings, "reconnect_max_seconds", 60.0)),
        )


def _path(value: Any) -> Path | None:
    return None if value in (None, "") else Path(value).expanduser()


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


def _password(settings: Any) -> str | None:
    secret = getattr(settings, "password", None)
    if secret is not None:  # kwsd.config already put password_file's content here
        getter = getattr(secret, "get_secret_value", None)
        return str(getter() if callable(getter) else secret)
    password_file = _path(getattr(settings, "password_file", None))
    if password_file is None:
        return None
    _readable(password_file, "mqtt.password_file")
    try:
        text = password_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"mqtt.password_file {password_file} is not UTF-8 text") from None
    # Files written by `echo` or editors end with a newline that is not part of it.
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"mqtt.password_file {password_file} is empty")
    return password
