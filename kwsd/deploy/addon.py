"""The Home Assistant add-on: its options (/data/options.json) become a kwsd config.

The Supervisor writes the options the user saved in the add-on's Configuration tab to
/data/options.json and checks them against the schema in config.yaml, which catches
types and ranges. What it cannot catch is kwsd's own judgement: a phrase the model
cannot spell, a keyword without a phrase, both outputs switched off. `run_addon`
checks all of it before kwsd starts, by building the real config, loading it with
`kwsd.config.load_settings` and compiling the keywords with the model's tokenizer.

When the options are bad the add-on never crash-loops. It logs one line naming the
option and what is allowed, then either starts with the *last good options* (saved
after every start that passed the checks) and says so, or, on a first install with
nothing to fall back to, stays up in an error state: the reason is logged again every
ten minutes, the container's health check reports it, and a restart after fixing the
options picks them up. A model download that fails (no internet yet) is retried every
minute instead, since that heals by itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kwsd.deploy.probe import HealthState, check_wyoming, write_state
from kwsd.deploy.supervisor import MqttService, Supervisor, SupervisorError
from kwsd.errors import ConfigError, KeywordError, ModelError

WYOMING_URI: Final = "tcp://0.0.0.0:10400"
REMIND_SECONDS: Final = 600.0
MODEL_RETRY_SECONDS: Final = 60.0
ANNOUNCE_TIMEOUT_SECONDS: Final = 900.0

LogLevel = Literal["debug", "info", "warning", "error"]


class OptionsError(Exception):
    """The options cannot work; the message names the option and what is allowed."""


# --------------------------------------------------------------------------------------
# The options, as config.yaml's schema declares them
# --------------------------------------------------------------------------------------


class AddonKeyword(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phrase: str = Field(min_length=1, description='the words to spot, e.g. "HEY COMPUTER"')
    threshold: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="how sure the model must be, above 0 up to 1; higher means fewer false alarms",
    )  # fmt: skip
    boost: float | None = Field(
        default=None, ge=0.0, le=10.0,
        description="how strongly the search favours the phrase, 0 to 10; higher finds more",
    )  # fmt: skip
    display: str | None = Field(default=None, description="the name shown in Home Assistant")

    @field_validator("phrase")
    @classmethod
    def _words(cls, value: str) -> str:
        cleaned = " ".join(value.split())
        if not cleaned:
            raise ValueError('a keyword phrase must hold words, e.g. "HEY COMPUTER"')
        return cleaned

    @field_validator("display")
    @classmethod
    def _blank_display(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


class AddonOptions(BaseModel):
    """/data/options.json. Unknown keys (left over from an older version) are ignored."""

    model_config = ConfigDict(extra="allow")

    keywords: list[AddonKeyword] = Field(
        min_length=1, description="at least one entry with a `phrase`"
    )
    threshold: float | None = Field(
        default=None, gt=0.0, le=1.0, description="the default threshold, above 0 up to 1"
    )
    boost: float | None = Field(
        default=None, ge=0.0, le=10.0, description="the default boost, 0 to 10"
    )
    refractory_seconds: float | None = Field(
        default=None, ge=0.0, le=60.0,
        description="seconds a keyword stays quiet after it fired, 0 to 60",
    )  # fmt: skip
    wyoming: bool = True
    microphone: bool = False
    audio_device: str | None = None
    mqtt: bool = True
    mqtt_host: str | None = None
    mqtt_port: int | None = Field(default=None, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    ha_discovery: bool = True
    site_id: str | None = Field(
        default=None, pattern=r"^[a-z0-9_-]{1,64}$",
        description="1-64 lowercase letters, digits, _ and -, e.g. kitchen",
    )  # fmt: skip
    log_level: LogLevel = "info"

    @field_validator("audio_device", "mqtt_host", "mqtt_username", "mqtt_password", "site_id",
                     mode="before")  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def command(self) -> str:
        """`kwsd run` hears the microphone (and may serve Wyoming); `kwsd wyoming` only serves."""
        if self.microphone:
            return "run"
        if self.wyoming:
            return "wyoming"
        raise OptionsError(
            "options `wyoming` and `microphone` are both off, so the add-on would have "
            "nothing to do; turn on `wyoming` (Assist pipelines) or `microphone` (listen "
            "to this machine's audio input and publish to MQTT)"
        )

    @property
    def unknown(self) -> list[str]:
        return sorted(self.model_extra or {})


def parse_options(text: str, source: str = "options.json") -> AddonOptions:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise OptionsError(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise OptionsError(f"{source} must hold a JSON object, not {type(raw).__name__}")
    try:
        return AddonOptions.model_validate(raw)
    except ValidationError as exc:
        raise OptionsError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        name = loc.lstrip(".") or "options"
        reason = str(error["msg"]).removeprefix("Value error, ")
        about = _description(error["loc"])
        hint = f" ({name.rsplit('.', 1)[-1]}: {about})" if about else ""
        if error["type"] == "missing":
            problems.append(f"option `{name}` is required{hint}")
            continue
        shown = "***" if "password" in name else json.dumps(error.get("input"))
        problems.append(f"option `{name}` = {shown} is invalid: {reason}{hint}")
    return "; ".join(problems)


def _description(loc: tuple[int | str, ...]) -> str | None:
    """What the option at `loc` is, from the models' field descriptions."""
    names = [p for p in loc if isinstance(p, str)]
    model: type[BaseModel] = AddonOptions
    for position, name in enumerate(names):
        field = model.model_fields.get(name)
        if field is None:
            return None
        if position == len(names) - 1:
            return field.description
        if name != "keywords":
            return None
        model = AddonKeyword
    return None


# --------------------------------------------------------------------------------------
# Options → kwsd config
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddonPaths:
    """Where the add-on reads and writes; /data is the add-on's persistent volume."""

    data: Path = Path("/data")

    @property
    def options(self) -> Path:
        return self.data / "options.json"

    @property
    def work(self) -> Path:
        return self.data / "kwsd-addon"

    @property
    def config(self) -> Path:
        return self.work / "config.toml"

    @property
    def last_good(self) -> Path:
        return self.work / "last-good-options.json"

    @property
    def mqtt_password(self) -> Path:
        return self.work / "mqtt-password"


@dataclass(frozen=True)
class Broker:
    """The MQTT broker kwsd will use and where it came from (for the log)."""

    service: MqttService
    origin: str


def choose_broker(options: AddonOptions, supervisor: Supervisor | None) -> Broker | None:
    """A broker typed into the options wins; else the Supervisor's MQTT service, if any.

    `supervisor` None: do not ask one (`kwsd container addon-config` outside the add-on).
    """
    if options.mqtt_host:
        service = MqttService(
            host=options.mqtt_host,
            port=options.mqtt_port or 1883,
            username=options.mqtt_username,
            password=options.mqtt_password,
        )
        return Broker(service, "the add-on options (mqtt_host)")
    if not options.mqtt or supervisor is None:
        return None
    try:
        offered = supervisor.mqtt_service()
    except SupervisorError as exc:
        _log("warning", f"cannot ask the Supervisor for its MQTT service ({exc}); no MQTT")
        return None
    if offered is None:
        _log(
            "warning",
            "the Supervisor offers no MQTT service (install and start the Mosquitto broker "
            "add-on, or set mqtt_host); detections are only logged",
        )
        return None
    return Broker(offered, "the Supervisor's MQTT service")


def kwsd_config(options: AddonOptions, paths: AddonPaths, broker: Broker | None) -> dict[str, Any]:
    """The kwsd config (as TOML-ready data) the options stand for."""
    config: dict[str, Any] = {"data_dir": str(paths.data)}
    if options.site_id:
        config["site_id"] = options.site_id
    config["keywords"] = {
        "phrases": [],
        "entries": [k.model_dump(exclude_none=True) for k in options.keywords],
    }
    search = {
        "threshold": options.threshold,
        "boost": options.boost,
        "refractory_seconds": options.refractory_seconds,
    }
    config["search"] = {k: v for k, v in search.items() if v is not None}
    config["wyoming"] = {"enabled": options.wyoming, "uri": WYOMING_URI}
    if options.audio_device:
        config["audio"] = {"device": options.audio_device}
    if broker is not None:
        mqtt: dict[str, Any] = {"host": broker.service.host, "port": broker.service.port}
        if broker.service.username:
            mqtt["username"] = broker.service.username
        if broker.service.password:
            mqtt["password_file"] = str(paths.mqtt_password)
        if broker.service.protocol in ("3.1.1", "5"):
            mqtt["protocol"] = broker.service.protocol
        if broker.service.ssl:
            mqtt["tls"] = {"enabled": True}
        config["mqtt"] = mqtt
    config["homeassistant"] = {"discovery": options.ha_discovery}
    config["health"] = {"enabled": True}
    config["log"] = {"level": options.log_level, "format": "console"}
    return config


def write_config(config: dict[str, Any], paths: AddonPaths, broker: Broker | None) -> None:
    from kwsd.cli.config import to_toml

    paths.work.mkdir(parents=True, exist_ok=True)
    if broker is not None and broker.service.password:
        # The password goes to a file only kwsd reads, not into config.toml or the environment.
        _write_private(paths.mqtt_password, broker.service.password + "\n")
    header = (
        "# Written by the kwsd add-on from /data/options.json at every start; edits are lost.\n"
    )
    _write_private(paths.config, header + to_toml(config))


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)


# --------------------------------------------------------------------------------------
# Checking a candidate and starting
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    command: str
    options: AddonOptions


def prepare(text: str, source: str, paths: AddonPaths, supervisor: Supervisor) -> Prepared:
    """Turn options text into a checked config.toml; raise OptionsError if they cannot work.

    A ModelError (the model could not be downloaded or opened) is raised as is: that is
    not the options' fault.
    """
    from kwsd.config import load_settings
    from kwsd.spotter import KeywordSpotter

    options = parse_options(text, source)
    command = options.command
    if options.unknown:
        _log(
            "warning",
            f"ignoring unknown options (from an older version?): {', '.join(options.unknown)}",
        )
    broker = choose_broker(options, supervisor) if command == "run" else None
    if broker is not None:
        _log(
            "info", f"MQTT broker {broker.service.host}:{broker.service.port} from {broker.origin}"
        )
    elif command == "wyoming" and (options.mqtt_host or options.mqtt):
        _log("info", "MQTT is used with `microphone: true` only; Wyoming detections go to Assist")
    write_config(kwsd_config(options, paths, broker), paths, broker)
    try:
        settings = load_settings(paths.config)
        specs = list(settings.keywords.items)  # the add-on's config has no keywords file
        spotter = KeywordSpotter.from_config(
            settings.model, settings.search, assets=settings.assets
        )
        spotter.compile(specs)
    except (ConfigError, KeywordError) as exc:
        raise OptionsError(str(exc)) from None
    return Prepared(command, options)


def save_last_good(text: str, paths: AddonPaths) -> None:
    paths.work.mkdir(parents=True, exist_ok=True)
    _write_private(paths.last_good, text)


def run_addon(paths: AddonPaths, supervisor: Supervisor) -> int:
    """The add-on's program: check the options, then become kwsd (or hold in an error state)."""
    from kwsd.deploy.container import start
    from kwsd.log import configure_logging

    configure_logging("info", "console")
    while True:
        try:
            prepared = _prepare_with_fallback(paths, supervisor)
        except ModelError as exc:
            _log(
                "error",
                f"the model is not available: {exc}; retrying in {MODEL_RETRY_SECONDS:.0f} s",
            )
            write_state(HealthState(error=f"model not available: {exc}"))
            if _wait_for_stop(MODEL_RETRY_SECONDS):
                return 0
            continue
        except OptionsError as exc:
            return hold_in_error_state(str(exc))
        break
    _log("info", f"starting `kwsd {prepared.command}` with {paths.config}")
    return start(
        [prepared.command, "--config", str(paths.config)],
        announce_wyoming=True,
        model_checked=True,
    )


def _prepare_with_fallback(paths: AddonPaths, supervisor: Supervisor) -> Prepared:
    try:
        text = paths.options.read_text(encoding="utf-8")
    except OSError as exc:
        text = ""
        problem = f"cannot read {paths.options}: {exc.strerror or exc}"
    else:
        try:
            prepared = prepare(text, str(paths.options), paths, supervisor)
        except OptionsError as exc:
            problem = str(exc)
        else:
            save_last_good(text, paths)
            return prepared
    if not paths.last_good.is_file():
        raise OptionsError(f"the add-on options are invalid: {problem}")
    _log("error", f"the add-on options are invalid: {problem}")
    saved = datetime.fromtimestamp(paths.last_good.stat().st_mtime, UTC).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    try:
        prepared = prepare(
            paths.last_good.read_text(encoding="utf-8"), str(paths.last_good), paths, supervisor
        )
    except OptionsError as exc:
        raise OptionsError(
            f"the add-on options are invalid: {problem} (and the last good options saved "
            f"{saved} no longer work either: {exc})"
        ) from None
    _log(
        "warning",
        f"starting with the last good options, saved {saved} (keywords: "
        f"{', '.join(k.phrase for k in prepared.options.keywords)}); fix the options above "
        "and restart the add-on to use them",
    )
    return prepared


def hold_in_error_state(reason: str) -> int:
    """Stay up, unhealthy, repeating why, until stopped: a restart loop would help nobody."""
    message = (
        f"{reason}. The add-on is waiting: fix the options in its Configuration tab and restart it."
    )
    write_state(HealthState(error=reason))
    _log("error", message)
    while not _wait_for_stop(REMIND_SECONDS):
        _log("error", message)
    return 0


@contextmanager
def _stop_signals_blocked() -> Iterator[set[signal.Signals]]:
    # Blocked and waited for, because a PID 1 without handlers ignores SIGTERM.
    signals = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield signals
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wait_for_stop(seconds: float) -> bool:
    """Sleep up to `seconds`; True when SIGTERM or SIGINT arrived (the container is stopping)."""
    with _stop_signals_blocked() as signals:
        return signal.sigtimedwait(signals, seconds) is not None


def announce_wyoming(
    uri: str, supervisor: Supervisor, timeout: float = ANNOUNCE_TIMEOUT_SECONDS
) -> int:
    """Tell Home Assistant where the Wyoming server is, once it answers a ping.

    Home Assistant then shows "Wyoming Protocol: discovered" and offers kwsd's keywords as
    wake words. The address is this container's host name on the add-on network.
    """
    port = uri.rpartition(":")[2]
    local = f"tcp://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while check_wyoming(local, 2.0) is not None:
        if time.monotonic() > deadline:
            _log("error", f"the Wyoming server at {local} never answered; not announced")
            return 1
        time.sleep(0.5)
    advertised = f"tcp://{socket.gethostname()}:{port}"
    try:
        supervisor.announce("wyoming", {"uri": advertised})
    except SupervisorError as exc:
        _log("error", f"sending Wyoming discovery to Home Assistant failed: {exc}")
        return 1
    _log("info", f"announced the Wyoming server {advertised} to Home Assistant")
    return 0


def _log(level: str, message: str) -> None:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} [{level:<7}] kwsd add-on: {message}", file=sys.stderr, flush=True)
