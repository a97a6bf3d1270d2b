"""kwsd settings: one typed model read from CLI flags, `KWSD_*` env vars and `config.toml`.

Precedence, highest first: command-line overrides, environment (`KWSD_MQTT__HOST`, nested
with `__`), the TOML file (`--config`, else `$KWSD_CONFIG`, else the platform config dir),
then defaults. Every model forbids unknown keys, because a typo such as `hots = ...` that
is silently ignored costs a Home Assistant user an evening. `load_settings` turns every
failure into one `ConfigError` paragraph naming the source, the key, what is wrong and
what is allowed, so the daemon can refuse a bad config while keeping the old one.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
import string
import tomllib
import types
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from kwsd.errors import ConfigError
from kwsd.keywords.spec import KeywordSpec

APP_NAME = "kwsd"
ENV_PREFIX = "KWSD_"
CONFIG_ENV_VAR = "KWSD_CONFIG"
# KWSD_* variables that are not settings; anything else with the prefix must name one.
RESERVED_ENV_VARS: frozenset[str] = frozenset({CONFIG_ENV_VAR})
SITE_ID_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")


def _expand_user(path: Path) -> Path:
    return path.expanduser()


# `~/keywords.txt` works in every path setting, from any source.
UserPath = Annotated[Path, AfterValidator(_expand_user)]


def default_site_id() -> str:
    """The host name, cut to its first label and made safe for MQTT topics and HA ids."""
    host = socket.gethostname().split(".", 1)[0].lower()
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", host).strip("-")[:64]
    return cleaned or APP_NAME


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def default_config_file() -> Path:
    """Where `config.toml` is looked for when neither `--config` nor $KWSD_CONFIG is given."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def _site_template(value: str) -> str:
    """Allow `{site_id}` (resolved by `Settings`) and no other placeholder."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{exc}; write {{{{ and }}}} for literal braces") from None
    unknown = sorted(names - {"site_id"})
    if unknown:
        raise ValueError(
            f"{{{unknown[0]}}} is not a placeholder kwsd knows; only {{site_id}} is substituted"
        )
    return value


# A string in which `{site_id}` is replaced by the site id once the settings are loaded.
SiteTemplate = Annotated[str, AfterValidator(_site_template)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


class ModelSettings(_Section):
    dir: UserPath | None = Field(
        default=None,
        description=(
            "Directory holding the model files (ONNX encoder/decoder/joiner, tokens.txt, "
            "bpe.model, or the CoreML bundle). None = the model `kwsd models pull` "
            "installed under data_dir."
        ),
    )
    backend: Literal["auto", "onnx", "coreml"] = Field(
        default="auto",
        description="Inference backend: auto = CoreML on macOS when available, else ONNX Runtime.",
    )
    precision: Literal["int8", "fp32"] = Field(
        default="int8",
        description="Which ONNX weights to use: int8 (smaller, faster) or fp32.",
    )
    num_threads: int = Field(
        default=1, ge=1, le=64, description="ONNX Runtime intra-op threads per model."
    )
    coreml_compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = Field(
        default="all",
        description="CoreML compute units (macOS only); cpu_and_ne = CPU and Neural Engine.",
    )
    onnx_url: str | None = Field(
        default=None,
        description="Download URL of the ONNX model archive. None = the official upstream release.",
    )
    coreml_repo: str = Field(
        default="aufklarer/KWS-Zipformer-3M-CoreML-INT8",
        description="Hugging Face repository of the CoreML bundle.",
    )
    allow_download: bool = Field(
        default=True,
        description="Download the model on first run when it is missing (false = fail instead).",
    )


def _split_phrases(value: object) -> object:
    """Env vars carry lists as JSON (`["A", "B"]`) or, more naturally, comma-separated."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f'not a valid JSON list ({exc.msg}); use "A, B" or \'["A", "B"]\''
            ) from None
    return [part for part in (p.strip() for p in text.split(",")) if part]


class KeywordsSettings(_Section):
    phrases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Keywords as plain English phrases with the model's default boost and threshold, "
            'e.g. ["HEY COMPUTER", "LIGHTS OFF"]. In the environment: comma-separated.'
        ),
    )
    entries: list[KeywordSpec] = Field(
        default_factory=list,
        description=(
            "Keywords with their own settings, one [[keywords.entries]] table each: phrase "
            "(or pieces), and optionally boost, threshold, display, alternates."
        ),
    )
    file: UserPath | None = Field(
        default=None,
        description=(
            "A keywords file: sherpa-onnx keyword lines or plain phrases (one per line), "
            "or a TOML/JSON list of entries. Its keywords are added to the ones above."
        ),
    )
    watch: bool = Field(
        default=True,
        description="Reload the keywords file when it changes (a bad edit keeps the old list).",
    )

    @field_validator("phrases", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_phrases(value)

    @field_validator("phrases")
    @classmethod
    def _non_empty_phrases(cls, value: list[str]) -> list[str]:
        cleaned = [" ".join(p.split()) for p in value]
        if any(not p for p in cleaned):
            raise ValueError('phrases must not be empty strings; write e.g. "LIGHT UP"')
        return cleaned

    @property
    def items(self) -> list[KeywordSpec]:
        """The inline keywords (phrases, then entries) in one list; the file is read elsewhere."""
        return [KeywordSpec(phrase=p) for p in self.phrases] + list(self.entries)


class SearchSettings(_Section):
    beam: int = Field(
        default=4, ge=1, le=64, description="Beam width of the keyword search (active paths)."
    )
    boost: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="Default per-token context boost; higher finds more (and false-alarms more). "
        "None = the model's default.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Default trigger threshold (mean token probability); higher = stricter. "
        "None = the model's default.",
    )
    num_trailing_blanks: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Blank frames required after the last keyword token before it fires. "
        "None = the model's default.",
    )
    auto_reset_seconds: float | None = Field(
        default=None,
        gt=0.0,
        description="Reset the search state after this much audio without a detection, "
        "bounding drift on long streams. None = the model's default.",
    )
    refractory_seconds: float = Field(
        default=1.0,
        ge=0.0,
        description="Ignore repeats of the same keyword for this long after it fired.",
    )


class AudioSettings(_Section):
    source: Literal["mic", "file", "stdin"] = Field(
        default="mic",
        description="Where audio comes from: mic (a sound device), file, or stdin "
        "(raw 16-bit little-endian PCM at sample_rate, default 16000 Hz).",
    )
    device: str | int | None = Field(
        default=None,
        description="Input device: a name substring or an index (see `kwsd devices`). "
        "None = the system default input.",
    )
    sample_rate: int | None = Field(
        default=None,
        ge=8000,
        le=192000,
        description="Capture rate in Hz. None = 16000 if the device supports it, else the "
        "device's default rate (resampled to 16 kHz).",
    )
    channel: int | None = Field(
        default=None,
        ge=0,
        le=63,
        description="Use only this input channel (0-based). None = downmix all channels.",
    )
    file: UserPath | None = Field(
        default=None, description='Audio file to read when source = "file".'
    )
    realtime: bool = Field(
        default=True, description="Pace file input at real time, as if it were a microphone."
    )
    loop: bool = Field(default=False, description="Restart file input at its end.")
    block_ms: int = Field(
        default=100, ge=10, le=1000, description="Audio block size read from the source, in ms."
    )
    max_queue_seconds: float = Field(
        default=5.0,
        gt=0.0,
        le=600.0,
        description="Audio waiting for the decoder beyond this is dropped (oldest first) and "
        "counted, so a stalled decoder never grows memory without bound.",
    )
    silence_warning_seconds: float = Field(
        default=10.0,
        ge=0.0,
        description="Warn when the input is all zeros for this long (muted mic). 0 = never.",
    )
    reopen_backoff_max_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="When the device fails, retry opening it with backoff up to this interval.",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _index_from_digits(cls, value: object) -> object:
        # KWSD_AUDIO__DEVICE=2 arrives as the string "2"; it means device index 2.
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return int(text)
            if not text:
                raise ValueError("device must be a name substring or an index, not empty")
        return value

    @model_validator(mode="after")
    def _file_needs_path(self) -> AudioSettings:
        if self.source == "file" and self.file is None:
            raise ValueError('source = "file" needs `file` set to the audio file to read')
        return self


class TlsSettings(_Section):
    enabled: bool = Field(default=False, description="Connect to the broker with TLS.")
    ca_certs: UserPath | None = Field(
        default=None,
        description="CA certificate file (PEM) to verify the broker. None = the system CAs.",
    )
    certfile: UserPath | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    keyfile: UserPath | None = Field(
        default=None, description="Private key (PEM) of the client certificate."
    )
    insecure: bool = Field(
        default=False,
        description="Skip broker certificate and host name checks (self-signed test brokers only).",
    )

    @field_validator("ca_certs", "certfile", "keyfile")
    @classmethod
    def _must_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist or is not a file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        given = [n for n in ("ca_certs", "certfile", "keyfile") if getattr(self, n) is not None]
        if given and not self.enabled:
            raise ValueError(
                f"{', '.join(given)} set but TLS is off; add `enabled = true` to [mqtt.tls]"
            )
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile (the client certificate) as well")
        return self


def _read_secret_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot read {path}: {reason}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError(f"{path} is empty; it should hold the broker password")
    return secret


class MqttSettings(_Section):
    host: str | None = Field(
        default=None,
        description="Broker host name or IP. None = no broker: detections are printed as "
        "JSON lines on stdout.",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Broker TCP port. None = 1883, or 8883 when TLS is enabled.",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS options.")
    username: str | None = Field(default=None, description="Broker user name.")
    password: SecretStr | None = Field(
        default=None, description="Broker password. Prefer password_file for secrets."
    )
    password_file: UserPath | None = Field(
        default=None,
        description="File whose content (trailing newline stripped) is the broker password, "
        "e.g. a Docker or systemd credential. Read when the config is loaded.",
    )
    client_id: SiteTemplate = Field(
        default="kwsd-{site_id}",
        min_length=1,
        max_length=128,
        description="MQTT client id; {site_id} is replaced by the site id.",
    )
    keepalive: int = Field(
        default=60, ge=5, le=65535, description="Keep-alive interval in seconds."
    )
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description='MQTT protocol version: "5" or "3.1.1".'
    )
    base_topic: SiteTemplate = Field(
        default="kwsd/{site_id}",
        min_length=1,
        description="Prefix of every kwsd topic; {site_id} is replaced by the site id.",
    )
    qos: Literal[0, 1, 2] = Field(default=1, description="QoS of detection events.")
    outbox_size: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Messages kept while the broker is unreachable; the oldest are dropped "
        "beyond this.",
    )
    reconnect_min_seconds: float = Field(
        default=1.0, gt=0.0, description="First reconnect delay; doubles on each failure."
    )
    reconnect_max_seconds: float = Field(
        default=60.0, gt=0.0, description="Longest reconnect delay."
    )

    @field_validator("host", "username", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        # `protocol = 5` is what people type in TOML.
        return str(value) if isinstance(value, int | float) else value

    @field_validator("base_topic")
    @classmethod
    def _publishable_topic(cls, value: str) -> str:
        if "+" in value or "#" in value:
            raise ValueError("base_topic must not contain MQTT wildcards (+ or #)")
        if value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError('base_topic must not start or end with "/" nor contain "//"')
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_secret_file(value)
        return value

    @model_validator(mode="after")
    def _resolve_password(self) -> MqttSettings:
        if self.password_file is not None:
            if self.password is not None:
                raise ValueError("set either password or password_file, not both")
            self.password = SecretStr(_read_secret_file(self.password_file))
        if self.password is not None and self.username is None:
            raise ValueError("a password is set but no username; MQTT needs both")
        if self.reconnect_min_seconds > self.reconnect_max_seconds:
            raise ValueError(
                f"reconnect_min_seconds ({self.reconnect_min_seconds}) is larger than "
                f"reconnect_max_seconds ({self.reconnect_max_seconds})"
            )
        return self


class HomeAssistantSettings(_Section):
    discovery: bool = Field(
        default=True,
        description="Publish Home Assistant MQTT discovery (an event entity and device "
        "triggers per keyword). Only used when mqtt.host is set.",
    )
    discovery_prefix: str = Field(
        default="homeassistant",
        min_length=1,
        description="Home Assistant's discovery prefix.",
    )
    node_id: SiteTemplate = Field(
        default="{site_id}",
        description="Node id in discovery topics and unique ids; {site_id} is replaced.",
    )

    @field_validator("node_id")
    @classmethod
    def _id_characters(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]*", value.replace("{site_id}", "x")) or not value:
            raise ValueError("node_id may only hold letters, digits, _ and - (and {site_id})")
        return value


class HermesSettings(_Section):
    enabled: bool = Field(
        default=False,
        description="Speak the Rhasspy/Hermes hotword protocol (hermes/hotword/...) as well.",
    )
    site_id: SiteTemplate = Field(
        default="{site_id}",
        min_length=1,
        description="Hermes siteId; {site_id} is replaced by the top-level site_id.",
    )


class WyomingSettings(_Section):
    enabled: bool = Field(
        default=False, description="Serve the Wyoming wake-word protocol (Home Assistant Assist)."
    )
    uri: str = Field(
        default="tcp://0.0.0.0:10400",
        description="Where the Wyoming server listens: tcp://HOST:PORT or unix:///path.",
    )
    max_connections: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="Most Wyoming connections served at once (Home Assistant opens one per "
        "running pipeline, wyoming-satellite one per satellite); one more gets an `error` "
        "event and is closed.",
    )
    message_timeout_seconds: float = Field(
        default=10.0,
        gt=0.0,
        le=600.0,
        description="A message must arrive complete within this time of its first byte, or "
        "its connection is closed (stops clients that trickle bytes and hold a slot).",
    )
    idle_timeout_seconds: float = Field(
        default=600.0,
        ge=0.0,
        description="Close a connection that sends nothing for this long (a satellite "
        "reconnects by itself). 0 = never.",
    )
    zeroconf: bool = Field(
        default=True,
        description="Announce the Wyoming server on the local network (mDNS, _wyoming._tcp) "
        "so Home Assistant discovers it. tcp:// only.",
    )
    zeroconf_name: SiteTemplate = Field(
        default="kwsd-{site_id}",
        min_length=1,
        max_length=63,
        description="Service name in the announcement (unique on the network); {site_id} is "
        "replaced by the site id.",
    )
    zeroconf_host: str | None = Field(
        default=None,
        description="IP address to announce. None = the address in `uri`, or this machine's "
        "main IPv4 address when `uri` listens on all interfaces; set it in a container.",
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.fullmatch(r"tcp://[^:/]+:\d{1,5}|unix://.+", value):
            raise ValueError('uri must look like "tcp://0.0.0.0:10400" or "unix:///run/kwsd.sock"')
        return value

    @field_validator("zeroconf_host")
    @classmethod
    def _an_ip_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(
                    f"zeroconf_host must be an IP address such as 192.168.1.20, not {value!r}"
                ) from None
        return value


class MuteSettings(_Section):
    mute_while_topic: str | None = Field(
        default=None,
        description='Mute spotting while the last payload on this MQTT topic is truthy ("ON", '
        '"true", "1"), e.g. a media player\'s state. None = no topic.',
    )

    @field_validator("mute_while_topic", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class HealthSettings(_Section):
    enabled: bool = Field(
        default=False, description="Serve /healthz and Prometheus /metrics over HTTP."
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(default=9731, ge=1, le=65535, description="TCP port to listen on.")


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level: debug, info, warning or error."
    )
    format: Literal["auto", "console", "json"] = Field(
        default="auto",
        description="auto = readable console output on a terminal, JSON lines otherwise.",
    )

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


# --------------------------------------------------------------------------------------
# The settings root and its sources
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadedFile:
    path: Path
    data: dict[str, Any]


# The file `load_settings` chose, for `settings_customise_sources` (which is a classmethod
# and cannot take arguments). A ContextVar keeps concurrent loads in threads/tasks apart.
_CURRENT_FILE: ContextVar[_LoadedFile | None] = ContextVar("kwsd_config_file", default=None)


class _ParsedFileSource(PydanticBaseSettingsSource):
    """The chosen config.toml, already parsed by `read_config_file` (paths file-relative).

    A source of kwsd's own on pydantic-settings' public base class: the file is read once,
    with kwsd's error messages, and handed over as data.
    """

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class Settings(BaseSettings):
    """All kwsd settings. Build it with `load_settings`, which gives friendly errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_ignore_empty=True,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    assets: UserPath | None = Field(
        default=None,
        description="Development/test asset directory (env KWSD_ASSETS). When set, the model "
        "is its real decoder/joiner with the stand-in encoder.",
    )
    site_id: str = Field(
        default_factory=default_site_id,
        description="Name of this satellite in topics and ids: lowercase letters, digits, "
        "_ and -. Default: this machine's host name.",
    )
    data_dir: UserPath = Field(
        default_factory=default_data_dir,
        description="Where kwsd keeps its state (models, runtime keyword list). Default: the "
        "platform's user data directory.",
    )
    model: ModelSettings = Field(default_factory=ModelSettings, description="The model.")
    keywords: KeywordsSettings = Field(
        default_factory=KeywordsSettings, description="What to spot."
    )
    search: SearchSettings = Field(
        default_factory=SearchSettings, description="Keyword search tuning."
    )
    audio: AudioSettings = Field(default_factory=AudioSettings, description="Audio input.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT broker.")
    homeassistant: HomeAssistantSettings = Field(
        default_factory=HomeAssistantSettings, description="Home Assistant discovery."
    )
    hermes: HermesSettings = Field(
        default_factory=HermesSettings, description="Rhasspy Hermes protocol."
    )
    wyoming: WyomingSettings = Field(
        default_factory=WyomingSettings, description="Wyoming wake-word server."
    )
    mute: MuteSettings = Field(default_factory=MuteSettings, description="Muting.")
    health: HealthSettings = Field(
        default_factory=HealthSettings, description="Health and metrics endpoint."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")

    _config_path: Path | None = PrivateAttr(default=None)

    @property
    def config_path(self) -> Path | None:
        """The config.toml these settings came from (None = environment and defaults only)."""
        return self._config_path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        loaded = _CURRENT_FILE.get()
        if loaded is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, _ParsedFileSource(settings_cls, loaded.data))

    @field_validator("site_id")
    @classmethod
    def _valid_site_id(cls, value: str) -> str:
        if not SITE_ID_PATTERN.fullmatch(value):
            raise ValueError(
                "site_id must be 1-64 characters of lowercase letters, digits, _ and -, "
                'e.g. "kitchen" (it is used in MQTT topics and Home Assistant ids)'
            )
        return value

    @model_validator(mode="after")
    def _substitute_site_id(self) -> Settings:
        # Resolved once here (the templates were checked per field), so every consumer
        # sees final strings.
        site = self.site_id
        self.mqtt.client_id = self.mqtt.client_id.format(site_id=site)
        self.mqtt.base_topic = self.mqtt.base_topic.format(site_id=site)
        self.hermes.site_id = self.hermes.site_id.format(site_id=site)
        self.homeassistant.node_id = self.homeassistant.node_id.format(site_id=site)
        self.wyoming.zeroconf_name = self.wyoming.zeroconf_name.format(site_id=site)
        return self

    def masked_dump(self) -> dict[str, Any]:
        """The effective settings as plain JSON-able data, secrets replaced by "***"."""
        result = _plain(self)
        assert isinstance(result, dict)
        return result


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def resolve_config_path(explicit: Path | None = None) -> tuple[Path | None, str]:
    """Which config.toml to read, and why (for messages). Missing explicit files are errors."""
    if explicit is not None:
        return _existing(Path(explicit).expanduser(), "--config"), "--config"
    from_env = os.environ.get(CONFIG_ENV_VAR, "").strip()
    if from_env:
        return _existing(Path(from_env).expanduser(), f"${CONFIG_ENV_VAR}"), f"${CONFIG_ENV_VAR}"
    default = default_config_file()
    if default.is_file():
        return default, "the default location"
    return None, f"no file (looked for {default})"


def _existing(path: Path, origin: str) -> Path:
    if path.is_dir():
        raise ConfigError(f"config file {path} (from {origin}) is a directory; give a .toml file")
    if not path.is_file():
        raise ConfigError(
            f"config file {path} (from {origin}) does not exist; check the path, or create it "
            "with `kwsd config init`"
        )
    return path.absolute()  # stable in messages even if the daemon changes directory


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse config.toml; syntax errors name the line and column, paths become file-relative."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}. Check quoting (strings need "
            '"quotes"), brackets and one key = value per line around that spot.'
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    _make_paths_relative_to(data, Settings, path.parent)
    return data


def _is_path_type(annotation: Any) -> bool:
    if annotation is Path:
        return True
    return any(_is_path_type(arg) for arg in get_args(annotation))


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class in an annotation such as `X`, `X | None`, `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def _make_paths_relative_to(data: dict[str, Any], model: type[BaseModel], base: Path) -> None:
    # `file = "keywords.txt"` in /etc/kwsd/config.toml means /etc/kwsd/keywords.txt, as users
    # expect, not a file in whatever directory the service happened to start in.
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        sub = _submodel(field.annotation)
        if sub is not None and isinstance(value, dict):
            _make_paths_relative_to(value, sub, base)
        elif (
            _is_path_type(field.annotation)
            and isinstance(value, str)
            and value
            and not value.startswith("~")
            and not Path(value).is_absolute()
        ):
            data[key] = str(base / value)


def load_settings(
    config_path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings from all sources, or raise one actionable `ConfigError`.

    `overrides` are command-line values, nested (`{"log": {"level": "debug"}}`) or dotted
    (`{"log.level": "debug"}`); None values mean "not given" and are dropped.
    """
    path, _origin = resolve_config_path(config_path)
    loaded = _LoadedFile(path, read_config_file(path)) if path is not None else None
    cli = nest_overrides(overrides or {})
    env = _kwsd_env()
    provenance = _Provenance(cli=cli, env=env, file=loaded)
    _check_env_names(env)
    token = _CURRENT_FILE.set(loaded)
    try:
        settings = Settings(**cli)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, provenance)) from None
    except SettingsError as exc:
        raise ConfigError(_explain_env_decoding(exc, env)) from None
    finally:
        _CURRENT_FILE.reset(token)
    settings._config_path = path
    return settings


def nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`{"mqtt.host": "x", "log": {"level": "debug"}}` → one nested dict, None values dropped.

    Keys may be dotted or use `__` like the env vars; later keys win over earlier ones.
    """
    result: dict[str, Any] = {}
    for key, raw in overrides.items():
        if raw is None:
            continue
        value = nest_overrides(raw) if isinstance(raw, Mapping) else raw
        if isinstance(value, dict) and not value:
            continue
        parts = [p for p in re.split(r"\.|__", key) if p]
        if not parts:
            raise ConfigError(f"command-line setting {key!r} has no key name")
        tree: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            tree = {part: tree}
        _deep_merge(result, tree)
    return result


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


# --------------------------------------------------------------------------------------
# Error explanation
# --------------------------------------------------------------------------------------


def _kwsd_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX) and v != ""}


def _explain_env_decoding(exc: SettingsError, env: Mapping[str, str]) -> str:
    """pydantic-settings names only the top-level field whose JSON failed to parse."""
    match = re.search(r'field "(\w+)"', str(exc))
    prefix = ENV_PREFIX + (match.group(1).upper() if match else "")
    names = sorted(n for n in env if n.upper().startswith(prefix)) or [f"{prefix}*"]
    return (
        f"invalid configuration: environment variable {' or '.join(names)} does not hold valid "
        "JSON. Lists and tables in KWSD_* variables must be JSON, e.g. "
        'KWSD_KEYWORDS__ENTRIES=\'[{"phrase": "LIGHT UP", "threshold": 0.3}]\' '
        '(KWSD_KEYWORDS__PHRASES also takes "A, B").'
    )


def _check_env_names(env: Mapping[str, str]) -> None:
    """pydantic-settings ignores unknown top-level KWSD_* variables; a typo must not vanish."""
    problems = []
    for name in sorted(env):
        if name.upper() in RESERVED_ENV_VARS:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        model: type[BaseModel] | None = Settings
        for depth, part in enumerate(parts):
            if model is None or part not in model.model_fields:
                where = ".".join(parts[:depth]) or None
                choices = sorted(model.model_fields) if model is not None else []
                problems.append(
                    _unknown_key_text(f"in environment variable {name}", part, where, choices)
                )
                break
            model = _submodel(model.model_fields[part].annotation)
    if problems:
        raise ConfigError(_join(problems))


@dataclass(frozen=True)
class _Provenance:
    cli: dict[str, Any]
    env: dict[str, str]
    file: _LoadedFile | None

    def source_of(self, loc: tuple[str | int, ...]) -> str:
        """Where the value at `loc` came from, highest precedence first."""
        keys = [str(p).lower() for p in loc if isinstance(p, str)]
        if _has_path(self.cli, keys):
            return "on the command line"
        env_upper = {k.upper(): k for k in self.env}
        for depth in range(len(keys), 0, -1):
            name = ENV_PREFIX + "__".join(keys[:depth]).upper()
            if name in env_upper:
                return f"in environment variable {env_upper[name]}"
        if self.file is not None and _has_path(self.file.data, keys):
            return f"in config file {self.file.path}"
        if self.file is not None:
            return f"(default value; config file {self.file.path})"
        return "(default value)"


def _has_path(data: Mapping[str, Any], keys: list[str]) -> bool:
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping):
            return True  # a leaf above `key` (e.g. a JSON table) holds the value
        lowered = {str(k).lower(): v for k, v in node.items()}
        if key not in lowered:
            return False
        node = lowered[key]
    return True


def _field_path(loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], type[BaseModel] | None]:
    """Trim pydantic's union-branch suffixes (`device.str`) off an error location."""
    model: type[BaseModel] | None = Settings
    kept: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            kept.append(part)
            continue
        if model is None or part not in model.model_fields:
            break
        kept.append(part)
        annotation = model.model_fields[part].annotation
        model = _submodel(annotation)
        if model is None and get_origin(annotation) is list:
            model = _submodel(get_args(annotation)[0])
    return tuple(kept), model


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _description(loc: tuple[str | int, ...]) -> str | None:
    model: type[BaseModel] | None = Settings
    desc = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        desc = field.description
        annotation = field.annotation
        model = _submodel(annotation)
        if model is None and get_origin(annotation) is list:
            model = _submodel(get_args(annotation)[0])
    return desc


def _show(value: Any, loc: tuple[str | int, ...]) -> str:
    if loc and loc[-1] == "password":
        return "***"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key_text(source: str, key: str, section: str | None, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f"; did you mean `{close[0]}`?" if close else "."
    place = f"[{section}]" if section else "the top level"
    return (
        f"unknown setting `{f'{section}.{key}' if section else key}` {source}{hint} "
        f"Settings allowed in {place}: {', '.join(choices)}."
    )


def _explain(exc: ValidationError, provenance: _Provenance) -> str:
    reasons: dict[tuple[str | int, ...], list[str]] = {}
    values: dict[tuple[str | int, ...], Any] = {}
    extras: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            parent, model = _field_path(loc[:-1])
            section = _dotted(parent) or None
            choices = sorted(model.model_fields) if model is not None else []
            source = provenance.source_of(loc)
            extras.setdefault(
                _dotted(loc), _unknown_key_text(source, str(loc[-1]), section, choices)
            )
            continue
        path, _ = _field_path(loc)
        reason = str(error["msg"]).removeprefix("Value error, ")
        # A union (e.g. `device: str | int`) reports one error per branch: keep them together.
        reasons.setdefault(path, []).append(reason)
        values.setdefault(path, error.get("input"))
    problems = list(extras.values())
    for path, why in reasons.items():
        problems.append(_invalid_text(path, values[path], why, provenance))
    return _join(problems)


def _invalid_text(
    path: tuple[str | int, ...], value: Any, reasons: list[str], provenance: _Provenance
) -> str:
    unique = list(dict.fromkeys(r.rstrip(".") for r in reasons))
    reason = " or ".join([unique[0], *(r[:1].lower() + r[1:] for r in unique[1:])])
    key = _dotted(path)
    if isinstance(value, dict):  # a check across several settings of one section
        section = f"[{key}] settings" if key else "settings"
        return f"{section} {provenance.source_of(path)}: {reason}."
    desc = _description(path)
    about = f" About `{key}`: {desc}" if desc else ""
    shown = _show(value, path)
    return f"`{key}` = {shown} {provenance.source_of(path)} is invalid: {reason}.{about}"


def _join(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid configuration: {problems[0]}"
    shown = " ".join(f"({i}) {p}" for i, p in enumerate(problems[:6], 1))
    more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
    return f"invalid configuration, {len(problems)} problems: {shown}{more}"


def lookup_field(dotted: str) -> FieldInfo | None:
    """The field a dotted key such as "mqtt.tls.enabled" names, or None if it names none."""
    model: type[BaseModel] | None = Settings
    field: FieldInfo | None = None
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = _submodel(field.annotation)
    return field


def iter_fields(
    model: type[BaseModel] = Settings, prefix: str = ""
) -> Iterator[tuple[str, type[BaseModel] | None]]:
    """Every settings key as a dotted path (sections included), for docs and parity tests."""
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        yield dotted, sub
        if sub is not None and sub is not KeywordSpec:
            yield from iter_fields(sub, f"{dotted}.")
