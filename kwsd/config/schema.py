"""What kwsd can be configured with: the settings root and one model per config section.

Every model forbids unknown keys, because a typo such as `hots = ...` that is silently
ignored costs a Home Assistant user an evening. Validators here are the one place a
value is checked; the code that consumes a section (MQTT link, audio sources, keyword
registry) takes the validated section model and does not check again.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kwsd.config.fields import table_at, walk
from kwsd.config.sources import APP_NAME, ENV_PREFIX, file_source
from kwsd.keywords.spec import KeywordSpec
from kwsd.mqtt.topics import base_topic_problem

SITE_ID_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
# More decode processes than this is a typo, not a machine (each holds its own model).
MAX_DECODE_WORKERS = 64


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


def _keyword_entry(value: object) -> KeywordSpec:
    """One `[[keywords.entries]]` table, checked by KeywordSpec itself.

    The same checks and words as a keywords file or an MQTT command; the error it raises
    names the field at fault, which `kwsd.config.explain` turns into the dotted key
    (`keywords.entries[0].threshold`).
    """
    if isinstance(value, KeywordSpec):
        return value
    if isinstance(value, Mapping):
        return KeywordSpec.from_mapping(value)
    raise ValueError(
        "a keyword entry is a table with a `phrase` or `pieces` ([[keywords.entries]] in "
        "TOML, an object in JSON); plain phrases go in `keywords.phrases`"
    )


# Dumped (`kwsd config check`) as written: the fields that differ from their defaults.
KeywordEntry = Annotated[
    KeywordSpec, PlainValidator(_keyword_entry), PlainSerializer(KeywordSpec.to_dict)
]


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
    entries: list[KeywordEntry] = Field(
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
    vad: Literal["off", "webrtc"] = Field(
        default="off",
        description='Voice-activity gate: "webrtc" rests the encoder while nobody speaks '
        '(most of the CPU of an always-on microphone), "off" runs it on all audio.',
    )
    vad_aggressiveness: int = Field(
        default=2,
        ge=0,
        le=3,
        description="How readily the gate calls sound non-speech, 0-3 (WebRTC's modes): higher "
        "saves more CPU in a noisy room and may clip quiet speech.",
    )
    vad_pre_roll_seconds: float = Field(
        default=1.0,
        ge=0.0,
        le=5.0,
        description="Audio from before the gate opens that is replayed through the encoder, so "
        "a keyword said right at the onset is heard whole.",
    )
    vad_hangover_seconds: float = Field(
        default=0.5,
        ge=0.03,
        le=10.0,
        description="The gate closes after this much audio without speech; it bridges the "
        "pauses between the words of one command.",
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
    outbox_max_age_seconds: float = Field(
        default=30.0,
        ge=0.0,
        description="Queued events (detections, command replies) older than this are dropped "
        'and counted instead of being delivered late: a "lights on" that arrives minutes '
        "after it was said is worse than none, and by then the user has repeated it or "
        "given up. 30 s covers a broker or Wi-Fi restart. 0 = no limit (e.g. to log "
        "every detection).",
    )
    reconnect_min_seconds: float = Field(
        default=1.0, gt=0.0, description="First reconnect delay; doubles on each failure."
    )
    reconnect_max_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description="Longest reconnect delay. For the first minute of an outage kwsd retries "
        "at least every 2 s (or every reconnect_min_seconds, if longer), so it is back within "
        "about 2 s of the broker's return; after that the delay doubles up to this.",
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
        problem = base_topic_problem(value)
        if problem is not None:
            raise ValueError(f'{problem} (example: "kwsd/kitchen")')
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
    workers: int | Literal["auto"] = Field(
        default=0,
        description="Decode processes for the Wyoming streams. 0 = one decode thread in "
        "kwsd's own process, its encoder calls spread over all cores (lightest; enough for "
        "most homes). N = N processes, each with its own Python and model (130–230 MiB "
        'each), for machines with many cores; "auto" = one per core kwsd may use. With '
        'many streams set model.precision = "fp32": only the fp32 files batch streams '
        "exactly.",
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

    @field_validator("workers")
    @classmethod
    def _sensible_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= MAX_DECODE_WORKERS:
            raise ValueError(
                f'workers must be 0 (one thread), 1 to {MAX_DECODE_WORKERS} or "auto", not {value}'
            )
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
    scope: Literal["source", "all"] = Field(
        default="source",
        description='What a mute silences: "source" = only this daemon\'s own audio source '
        "(the pause switch, cmd/pause, Hermes toggleOff and mute_while_topic are about this "
        'microphone); "all" = the Wyoming wake-word clients too.',
    )
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
# The settings root
# --------------------------------------------------------------------------------------


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
        parsed_file = file_source(settings_cls)
        if parsed_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, parsed_file)

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
        data = self.model_dump(mode="json")
        for field in walk(type(self)):
            table = table_at(data, field.path[:-1]) if field.is_secret else None
            if table is not None and table.get(field.name) is not None:
                table[field.name] = "***"
        return data
