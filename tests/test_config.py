"""Settings: sources and precedence, friendly errors, secrets, the example file, `kwsd config`."""

from __future__ import annotations

import argparse
import json
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

import kwsd.cli
from kwsd.cli.config import add_config_args, parse_set_option, settings_from_args, to_toml
from kwsd.config import (
    Settings,
    TlsSettings,
    default_site_id,
    follow,
    load_settings,
    lookup_field,
    walk,
)
from kwsd.errors import ConfigError, ExitCode
from kwsd.keywords.spec import KeywordSpec

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "kwsd" / "data" / "config.example.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KWSD_* from the developer's shell, and platform dirs inside tmp_path."""
    for name in list(os.environ):
        if name.upper().startswith("KWSD_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "errors are one paragraph"
    assert "pydantic" not in message and "errors.pydantic.dev" not in message
    return message


# --- sources and precedence -------------------------------------------------------------


def test_defaults_without_any_file(clean_env: Path) -> None:
    settings = load_settings()
    site = default_site_id()
    assert settings.config_path is None
    assert settings.site_id == site
    assert settings.mqtt.host is None
    assert settings.mqtt.client_id == f"kwsd-{site}"
    assert settings.mqtt.base_topic == f"kwsd/{site}"
    assert settings.homeassistant.node_id == site
    assert settings.hermes.site_id == site
    assert settings.data_dir == clean_env / ".local" / "share" / "kwsd"
    assert settings.keywords.items == []
    assert settings.search.beam == 4
    assert settings.model.precision == "int8"


def test_precedence_file_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path / "c.toml",
        '[mqtt]\nhost = "file-host"\nport = 1000\n[search]\nbeam = 5\n[log]\nlevel = "warning"\n',
    )
    monkeypatch.setenv("KWSD_MQTT__PORT", "2000")
    monkeypatch.setenv("KWSD_LOG__LEVEL", "error")
    settings = load_settings(cfg, {"log": {"level": "debug"}, "mqtt.keepalive": None})
    assert settings.search.beam == 5  # file beats default
    assert settings.mqtt.port == 2000  # env beats file
    assert settings.mqtt.host == "file-host"  # env on a sibling key keeps the file's value
    assert settings.log.level == "debug"  # CLI beats env
    assert settings.mqtt.keepalive == 60  # None override = flag not given
    assert settings.config_path == cfg


def test_nested_env_with_double_underscore(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = write(tmp_path / "ca.pem", "not checked here\n")
    monkeypatch.setenv("KWSD_MQTT__TLS__ENABLED", "true")
    monkeypatch.setenv("KWSD_MQTT__TLS__CA_CERTS", str(ca))
    monkeypatch.setenv("kwsd_search__threshold", "0.3")  # names are case-insensitive
    monkeypatch.setenv("KWSD_SITE_ID", "kitchen")
    monkeypatch.setenv("KWSD_MQTT__HOST", "")  # empty = unset, as docker-compose writes it
    settings = load_settings()
    assert settings.mqtt.tls.enabled is True
    assert settings.mqtt.tls.ca_certs == ca
    assert settings.search.threshold == pytest.approx(0.3)
    assert settings.site_id == "kitchen"
    assert settings.mqtt.host is None
    assert settings.mqtt.base_topic == "kwsd/kitchen"


def test_kwsd_config_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "elsewhere" / "kwsd.toml", "[search]\nbeam = 7\n")
    monkeypatch.setenv("KWSD_CONFIG", str(cfg))
    settings = load_settings()
    assert settings.search.beam == 7
    assert settings.config_path == cfg

    monkeypatch.setenv("KWSD_CONFIG", str(tmp_path / "missing.toml"))
    message = config_error()
    assert "$KWSD_CONFIG" in message and "missing.toml" in message


def test_platform_default_path(clean_env: Path) -> None:
    assert load_settings().config_path is None
    cfg = write(clean_env / ".config" / "kwsd" / "config.toml", 'site_id = "attic"\n')
    settings = load_settings()
    assert settings.config_path == cfg
    assert settings.site_id == "attic"


def test_explicit_config_beats_kwsd_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KWSD_CONFIG", str(write(tmp_path / "env.toml", 'site_id = "env"\n')))
    explicit = write(tmp_path / "cli.toml", 'site_id = "cli"\n')
    assert load_settings(explicit).site_id == "cli"


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.toml")
    assert "nope.toml" in message and "does not exist" in message and "--config" in message
    assert "is a directory" in config_error(tmp_path)


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(
        tmp_path / "etc" / "config.toml",
        '[keywords]\nfile = "keywords.txt"\n[audio]\nfile = "/abs/a.wav"\n[model]\ndir = "~/m"\n',
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(cfg, {"data_dir": "state"})
    assert settings.keywords.file == tmp_path / "etc" / "keywords.txt"
    assert settings.audio.file == Path("/abs/a.wav")
    assert settings.model.dir == Path.home() / "m"
    assert settings.data_dir == Path("state")  # from the command line: relative to the cwd


# --- errors -----------------------------------------------------------------------------


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[mqtt]\nhots = "broker"\n')
    message = config_error(cfg)
    assert "`mqtt.hots`" in message
    assert str(cfg) in message
    assert "did you mean `host`" in message
    assert "port" in message  # lists what is allowed in [mqtt]


def test_unknown_top_level_key_and_section(tmp_path: Path) -> None:
    message = config_error(write(tmp_path / "c.toml", "[mqqt]\nhost = 'x'\n"))
    assert "`mqqt`" in message and "did you mean `mqtt`" in message


def test_unknown_env_vars_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KWSD_MQTT__HOSTT", "broker")
    message = config_error()
    assert "KWSD_MQTT__HOSTT" in message and "`mqtt.hostt`" in message
    assert "did you mean `host`" in message

    monkeypatch.delenv("KWSD_MQTT__HOSTT")
    monkeypatch.setenv("KWSD_LOGLEVEL", "debug")  # top level: pydantic-settings ignores these
    message = config_error()
    assert "KWSD_LOGLEVEL" in message and "allowed in the top level" in message

    monkeypatch.delenv("KWSD_LOGLEVEL")
    monkeypatch.setenv("KWSD_MQTT__PORT__X", "1")  # below a leaf
    assert "KWSD_MQTT__PORT__X" in config_error()


def test_test_suite_variables_are_not_settings(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI runs the commands under test with KWSD_TEST_* set (where the real model is, ...):
    they are not settings, and not typos of one."""
    monkeypatch.setenv("KWSD_TEST_ONNX_MODEL_DIR", "/somewhere/models/onnx")
    monkeypatch.setenv("KWSD_TEST_REQUIRE_REALMODEL", "1")
    assert load_settings(None).model.dir is None


def test_unknown_cli_override_is_an_error() -> None:
    message = config_error(None, {"mqtt.hostname": "x"})
    assert "`mqtt.hostname`" in message and "on the command line" in message


def test_bad_types_name_key_source_and_allowed_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path / "c.toml", '[model]\nbackend = "tensorrt"\n')
    message = config_error(cfg)
    assert "`model.backend` = 'tensorrt'" in message and str(cfg) in message
    assert "'auto', 'onnx' or 'coreml'" in message

    monkeypatch.setenv("KWSD_MQTT__PORT", "abc")
    message = config_error()
    assert "`mqtt.port` = 'abc'" in message and "KWSD_MQTT__PORT" in message
    assert "valid integer" in message
    assert "Broker TCP port" in message  # the field's description says what it is


def test_range_errors_and_several_problems_at_once(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "[search]\nbeam = 0\n[mqtt]\nport = 70000\nqos = 3\n")
    assert load_settings().mqtt.port is None  # = 1883, or 8883 with TLS (see mqtt.options)
    message = config_error(cfg)
    assert "3 problems" in message
    assert "`search.beam` = 0" in message and "greater than or equal to 1" in message
    assert "`mqtt.port` = 70000" in message and "less than or equal to 65535" in message
    assert "`mqtt.qos` = 3" in message and "0, 1 or 2" in message


def test_union_field_errors_are_merged(tmp_path: Path) -> None:
    message = config_error(write(tmp_path / "c.toml", "[audio]\ndevice = [1]\n"))
    assert message.count("`audio.device` =") == 1
    assert "valid string" in message and "valid integer" in message


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "[mqtt]\nhost = broker.local\n")
    message = config_error(cfg)
    assert str(cfg) in message and "not valid TOML" in message
    assert "line 2, column 8" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b'site_id = "k\xe9"\n')
    assert "UTF-8" in config_error(cfg)


def test_json_env_value_that_does_not_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KWSD_KEYWORDS__ENTRIES", "LIGHT UP")
    message = config_error()
    assert "KWSD_KEYWORDS__ENTRIES" in message and "JSON" in message


# --- individual sections ----------------------------------------------------------------


def test_keywords_phrases_and_entries(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.toml",
        '[keywords]\nphrases = ["HEY  COMPUTER", "LIGHTS OFF"]\n'
        '[[keywords.entries]]\nphrase = "OPEN THE GARAGE"\nthreshold = 0.35\n'
        '[[keywords.entries]]\npieces = "▁ L IGHT ▁UP"\nboost = 2.0\n',
    )
    items = load_settings(cfg).keywords.items
    assert items == [
        KeywordSpec(phrase="HEY COMPUTER"),
        KeywordSpec(phrase="LIGHTS OFF"),
        KeywordSpec(phrase="OPEN THE GARAGE", threshold=0.35),
        KeywordSpec(pieces=("▁", "L", "IGHT", "▁UP"), boost=2.0),
    ]


def test_keyword_phrases_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KWSD_KEYWORDS__PHRASES", "LIGHT UP, HEY COMPUTER,")
    assert load_settings().keywords.phrases == ["LIGHT UP", "HEY COMPUTER"]
    monkeypatch.setenv("KWSD_KEYWORDS__PHRASES", '["A, B", "C"]')
    assert load_settings().keywords.phrases == ["A, B", "C"]


def test_bad_keyword_entries(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.toml",
        '[keywords]\nphrases = ["OK", " "]\n'
        '[[keywords.entries]]\nphrase = "X"\nthreshold = 3\n'
        "[[keywords.entries]]\nboost = 1.0\n"
        '[[keywords.entries]]\nphrase = "Y"\ntreshold = 0.2\n',
    )
    message = config_error(cfg)
    assert "`keywords.phrases`" in message and "empty" in message
    assert "`keywords.entries[0].threshold` = 3" in message
    assert "keywords.entries[1]" in message and "`phrase`" in message
    assert "`keywords.entries[2].treshold`" in message


def test_keyword_entry_errors_name_the_key_and_what_is_allowed(tmp_path: Path) -> None:
    """Entries are checked by KeywordSpec itself (no pydantic model), yet read like any
    other setting's error: the dotted key, the source, the value, the allowed keys."""
    cfg = tmp_path / "c.toml"
    message = config_error(write(cfg, '[[keywords.entries]]\nphrase = "X"\ntreshold = 0.2\n'))
    assert f"unknown setting `keywords.entries[0].treshold` in config file {cfg}" in message
    assert "did you mean `threshold`?" in message
    assert "allowed in [keywords.entries[0]]: alternates, boost, display, phrase, pieces" in message

    message = config_error(write(cfg, '[[keywords.entries]]\nphrase = "X"\npieces = 3\n'))
    assert f"`keywords.entries[0].pieces` = 3 in config file {cfg} is invalid" in message
    assert "must be BPE pieces" in message

    message = config_error(write(cfg, '[keywords]\nentries = ["LIGHT UP"]\n'))
    assert "`keywords.entries[0]` = 'LIGHT UP'" in message and "`keywords.phrases`" in message

    settings = load_settings(write(cfg, '[[keywords.entries]]\npieces = ["▁HE", "Y"]\n'))
    assert settings.keywords.entries == [KeywordSpec(pieces=("▁HE", "Y"))]
    assert settings.masked_dump()["keywords"]["entries"][0]["pieces"] == ["▁HE", "Y"]


def test_password_file(tmp_path: Path) -> None:
    write(tmp_path / "secrets" / "mqtt", "s3cret\n")
    cfg = write(
        tmp_path / "c.toml",
        '[mqtt]\nhost = "b"\nusername = "kwsd"\npassword_file = "secrets/mqtt"\n',
    )
    settings = load_settings(cfg)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret"
    assert settings.mqtt.password_file == tmp_path / "secrets" / "mqtt"


def test_password_file_problems(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[mqtt]\npassword_file = "missing"\n')
    message = config_error(cfg)
    assert "`mqtt.password_file`" in message and "cannot read" in message
    assert str(tmp_path / "missing") in message

    write(tmp_path / "empty", "\n")
    message = config_error(write(cfg, '[mqtt]\npassword_file = "empty"\n'))
    assert "empty" in message

    write(tmp_path / "pw", "x")
    message = config_error(write(cfg, '[mqtt]\npassword = "y"\npassword_file = "pw"\n'))
    assert "not both" in message and "[mqtt]" in message

    message = config_error(write(cfg, '[mqtt]\npassword_file = "pw"\n'))
    assert "no username" in message


def test_masked_dump_hides_secrets(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[mqtt]\nhost = "b"\nusername = "u"\npassword = "hunter2"\n')
    settings = load_settings(cfg)
    dump = settings.masked_dump()
    assert dump["mqtt"]["password"] == "***"
    assert dump["mqtt"]["username"] == "u"
    assert "hunter2" not in json.dumps(dump)
    assert "hunter2" not in repr(settings)
    assert load_settings().masked_dump()["mqtt"]["password"] is None


def test_password_is_never_echoed_in_errors() -> None:
    # a list is not a valid password; the message must still not repeat the value
    message = config_error(None, {"mqtt.password": ["hunter2"]})
    assert "hunter2" not in message and "`mqtt.password`" in message


def test_site_id_templates(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.toml",
        'site_id = "kitchen"\n[mqtt]\nbase_topic = "home/{site_id}/kws"\n'
        'client_id = "kws-{site_id}-1"\n[homeassistant]\nnode_id = "kws_{site_id}"\n'
        '[hermes]\nsite_id = "default"\n',
    )
    settings = load_settings(cfg)
    assert settings.mqtt.base_topic == "home/kitchen/kws"
    assert settings.mqtt.client_id == "kws-kitchen-1"
    assert settings.homeassistant.node_id == "kws_kitchen"
    assert settings.hermes.site_id == "default"


def test_a_display_name_with_a_control_character_is_a_config_error(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.toml",
        '[[keywords.entries]]\nphrase = "HEY COMPUTER"\ndisplay = "HEY\\u0000COMPUTER"\n',
    )
    message = config_error(config)
    assert "keywords.entries" in message and "control character (NUL at position 4)" in message


def test_template_and_topic_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    assert "{room}" in config_error(write(cfg, '[mqtt]\nbase_topic = "kwsd/{room}"\n'))
    assert "wildcards" in config_error(write(cfg, '[mqtt]\nbase_topic = "kwsd/#"\n'))
    assert "node_id" in config_error(write(cfg, '[homeassistant]\nnode_id = "a.b"\n'))
    message = config_error(write(cfg, 'site_id = "Kitchen Pi"\n'))
    assert "`site_id` = 'Kitchen Pi'" in message and "lowercase" in message


def test_default_site_id_is_sanitised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Kitchen Pi#2.local")
    assert default_site_id() == "kitchen-pi-2"
    monkeypatch.setattr(socket, "gethostname", lambda: "...")
    assert default_site_id() == "kwsd"
    assert load_settings().site_id == "kwsd"


def test_audio_settings(tmp_path: Path) -> None:
    assert load_settings(None, {"audio.device": "2"}).audio.device == 2
    assert load_settings(None, {"audio.device": "USB Mic"}).audio.device == "USB Mic"
    message = config_error(None, {"audio.source": "file"})
    assert "[audio]" in message and "needs `file`" in message
    assert "'mic', 'file' or 'stdin'" in config_error(None, {"audio.source": "alsa"})


def test_tls_settings(tmp_path: Path) -> None:
    cert = write(tmp_path / "ca.pem", "x")
    message = config_error(None, {"mqtt.tls.ca_certs": str(cert)})
    assert "enabled = true" in message
    message = config_error(None, {"mqtt.tls": {"enabled": True, "ca_certs": "/no/ca.pem"}})
    assert "`mqtt.tls.ca_certs`" in message and "does not exist" in message


@pytest.mark.parametrize(
    ("values", "where", "reason"),
    [
        ({"mqtt.tls.ca_certs": "FILE"}, "[mqtt.tls] settings", "add `enabled = true`"),
        ({"mqtt.tls": {"enabled": True, "keyfile": "FILE"}}, "[mqtt.tls]", "needs certfile"),
        ({"mqtt.username": "u", "mqtt.password_file": "/no/such"}, "`mqtt.password_file`", "read"),
        ({"mqtt.password": "p"}, "[mqtt] settings", "a password is set but no username"),
        ({"mqtt.base_topic": "kwsd/+/x"}, "`mqtt.base_topic`", "wildcards"),
        ({"mqtt.base_topic": "kwsd/kitchen/"}, "`mqtt.base_topic`", "start or end with `/`"),
        ({"mqtt.base_topic": "kwsd//kitchen"}, "`mqtt.base_topic`", "nor contain `//`"),
        ({"mqtt.base_topic": "$SYS/kwsd"}, "`mqtt.base_topic`", "reserved for the broker"),
        ({"mqtt.base_topic": "kw\0sd"}, "`mqtt.base_topic`", "NUL"),
        ({"mqtt.client_id": ""}, "`mqtt.client_id`", "at least 1 character"),
        ({"mqtt.protocol": "3.1"}, "`mqtt.protocol` = '3.1'", "'5' or '3.1.1'"),
        ({"mqtt.qos": 3}, "`mqtt.qos` = 3", "0, 1 or 2"),
        ({"mqtt.port": 70000}, "`mqtt.port` = 70000", "less than or equal to 65535"),
        ({"mqtt.port": 0}, "`mqtt.port` = 0", "greater than or equal to 1"),
        ({"mqtt.keepalive": 2}, "`mqtt.keepalive` = 2", "greater than or equal to 5"),
        ({"mqtt.keepalive": 70000}, "`mqtt.keepalive`", "less than or equal to 65535"),
        ({"mqtt.outbox_size": 0}, "`mqtt.outbox_size` = 0", "greater than or equal to 1"),
        ({"mqtt.reconnect_min_seconds": 0}, "`mqtt.reconnect_min_seconds`", "greater than 0"),
        (
            {"mqtt.reconnect_min_seconds": 5, "mqtt.reconnect_max_seconds": 1},
            "[mqtt] settings",
            "reconnect_min_seconds (5.0) is larger than reconnect_max_seconds (1.0)",
        ),
    ],
)
def test_every_bad_mqtt_value_is_refused_on_load(
    tmp_path: Path, values: dict[str, Any], where: str, reason: str
) -> None:
    """The `[mqtt]` model is the only check: MqttOptions carries what it let through."""
    pem = str(write(tmp_path / "x.pem", "x"))
    values = {
        key: ({k: pem if v == "FILE" else v for k, v in value.items()} if isinstance(value, dict)
              else pem if value == "FILE" else value)
        for key, value in values.items()
    }  # fmt: skip
    message = config_error(None, {"mqtt.host": "broker", **values})
    assert where in message and reason in message and "on the command line" in message


def test_misc_validation() -> None:
    assert load_settings(None, {"log.level": "DEBUG"}).log.level == "debug"
    assert load_settings(None, {"mqtt.protocol": 5}).mqtt.protocol == "5"
    assert "reconnect_min_seconds" in config_error(None, {"mqtt.reconnect_min_seconds": 90})
    assert "tcp://" in config_error(None, {"wyoming.uri": "0.0.0.0:10400"})


# --- the example file -------------------------------------------------------------------

EXAMPLE_ONLY = {"keywords"}  # sections whose example values are deliberately not defaults


def test_example_file_is_valid_and_matches_defaults() -> None:
    example = load_settings(EXAMPLE).masked_dump()
    defaults = load_settings().masked_dump()
    assert example["keywords"]["phrases"] and example["keywords"]["entries"]
    for section in EXAMPLE_ONLY:
        example.pop(section), defaults.pop(section)
    assert example == defaults


def test_example_file_documents_every_setting() -> None:
    sections: dict[str, set[str]] = {"": set()}
    current = ""
    for raw in EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("[") and not line.startswith("[ "):
            current = line.strip("[]")
            sections.setdefault(current, set())
            continue
        body = line.removeprefix("#").strip()
        if "=" in body and body.split("=", 1)[0].strip().isidentifier():
            sections[current].add(body.split("=", 1)[0].strip())
    missing = []
    for field in walk(Settings):
        dotted = field.dotted
        section, _, key = dotted.rpartition(".")
        if field.section is not None:  # a section: must have its own [table]
            if dotted not in sections:
                missing.append(f"[{dotted}]")
        elif key not in sections.get(section, set()) and dotted not in sections:
            missing.append(dotted)
    assert not missing, f"config.example.toml does not document: {missing}"


def test_every_field_has_a_description() -> None:
    fields = list(walk(Settings))
    assert {"mqtt.tls.enabled", "keywords.entries", "log.format"} <= {f.dotted for f in fields}
    undocumented = [field.dotted for field in fields if not field.description]
    assert not undocumented


def test_one_field_walk_serves_keys_error_locations_paths_and_secrets() -> None:
    enabled = lookup_field("mqtt.tls.enabled")
    assert enabled is not None and enabled.dotted == "mqtt.tls.enabled"
    tls = lookup_field("mqtt.tls")
    assert tls is not None and tls.section is TlsSettings
    assert lookup_field("mqtt.port.x") is None and lookup_field("mqtt.hots") is None
    assert lookup_field("keywords.entries.phrase") is None  # entries are an array of tables

    entry = follow(Settings, ("keywords", "entries", 0, "threshold"))
    assert entry.keys == ("keywords", "entries", 0, "threshold") and entry.model is None
    assert entry.field is not None and entry.field.name == "threshold"
    branch = follow(Settings, ("audio", "device", "str"))  # pydantic's union-branch suffix
    assert branch.keys == ("audio", "device")

    fields = list(walk(Settings))
    assert [f.dotted for f in fields if f.is_secret] == ["mqtt.password"]
    assert {f.dotted for f in fields if f.is_path} == {
        "assets",
        "data_dir",
        "model.dir",
        "keywords.file",
        "audio.file",
        "mqtt.tls.ca_certs",
        "mqtt.tls.certfile",
        "mqtt.tls.keyfile",
        "mqtt.password_file",
    }


# --- command line -----------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    # Only this module's command: the others are built by other helpers in parallel.
    monkeypatch.setattr(kwsd.cli, "COMMAND_MODULES", ("kwsd.cli.config",))
    return kwsd.cli.main(list(argv))


def test_config_check_prints_masked_toml_that_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(
        tmp_path / "c.toml",
        'site_id = "den"\n[mqtt]\nhost = "b"\nusername = "u"\npassword = "hunter2"\n'
        '[keywords]\nphrases = ["HEY COMPUTER"]\n'
        '[[keywords.entries]]\nphrase = "LIGHT UP"\nthreshold = 0.2\n',
    )
    code = run_cli(monkeypatch, "config", "check", "--config", str(cfg), "--set", "search.beam=6")
    out = capsys.readouterr().out
    assert code == 0
    assert "hunter2" not in out and 'password = "***"' in out
    assert str(cfg) in out
    parsed = tomllib.loads(out)
    assert parsed["search"]["beam"] == 6 and parsed["mqtt"]["base_topic"] == "kwsd/den"

    parsed["mqtt"]["password"] = "hunter2"
    again = tmp_path / "again.toml"
    again.write_text(to_toml(parsed), encoding="utf-8")
    assert (
        load_settings(again).masked_dump() == load_settings(cfg, {"search.beam": 6}).masked_dump()
    )


def test_config_check_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KWSD_MQTT__USERNAME", "u")
    monkeypatch.setenv("KWSD_MQTT__PASSWORD", "hunter2")
    assert run_cli(monkeypatch, "config", "check", "--format", "json") == 0
    out = capsys.readouterr().out
    assert json.loads(out)["mqtt"]["password"] == "***" and "hunter2" not in out


def test_config_check_invalid_exits_3_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "c.toml", "[mqtt]\nport = 'x'\n")
    code = run_cli(monkeypatch, "config", "check", "--config", str(cfg))
    err = capsys.readouterr().err
    assert code == int(ExitCode.CONFIG) == 3
    assert err.count("\n") == 1 and "`mqtt.port`" in err and str(cfg) in err


def test_config_check_warns_about_missing_referenced_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(
        monkeypatch,
        "config",
        "check",
        "--set",
        "audio.source=file",
        "--set",
        f"audio.file={tmp_path}/speech.wav",
    )
    assert code == 0
    assert "audio.file" in capsys.readouterr().err
    # A missing keywords file stops `kwsd run` (exit 5), so it fails the check too
    # (tests/test_config_check_keywords.py).


def test_config_path_command(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, "config", "path") == 0
    assert str(clean_env / ".config" / "kwsd" / "config.toml") in capsys.readouterr().out


def test_parse_set_option() -> None:
    assert parse_set_option("mqtt.port=1884") == ("mqtt.port", 1884)
    assert parse_set_option("mqtt.host=broker.local") == ("mqtt.host", "broker.local")
    assert parse_set_option('keywords.phrases=["A", "B"]') == ("keywords.phrases", ["A", "B"])
    assert parse_set_option("x=a=b") == ("x", "a=b")
    # settings that hold text keep it as typed, even when it looks like a number
    assert parse_set_option("mqtt.username=2024") == ("mqtt.username", "2024")
    assert parse_set_option("audio.device=2") == ("audio.device", "2")
    assert parse_set_option("mqtt.protocol=5") == ("mqtt.protocol", 5)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_option("mqtt.host")


def test_settings_from_args_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(
        ["--set", "audio.device=3", "--set", "log.level=error", "--log-level", "WARNING"]
    )
    monkeypatch.setenv("KWSD_AUDIO__BLOCK_MS", "50")
    settings = settings_from_args(args, audio__device="USB", audio__channel=None)
    assert settings.audio.device == "USB"  # the command's own flag beats --set
    assert settings.log.level == "warning"  # --log-level beats --set log.level
    assert settings.audio.block_ms == 50
    assert settings.audio.channel is None
