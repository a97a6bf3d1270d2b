"""kwsd settings: one typed model read from CLI flags, `KWSD_*` env vars and `config.toml`.

- `schema`: the settings root and one pydantic model per section, with every check.
- `sources`: finding and parsing the file, the environment, command-line overrides.
- `loading`: `load_settings`, which puts the sources together in order of precedence.
- `explain`: a failed load as one actionable paragraph.
- `fields`: the one walk over the models that all of the above use.
"""

from kwsd.config.fields import SettingField, follow, walk
from kwsd.config.loading import load_settings, lookup_field, read_config_file
from kwsd.config.schema import (
    SITE_ID_PATTERN,
    AudioSettings,
    HealthSettings,
    HermesSettings,
    HomeAssistantSettings,
    KeywordsSettings,
    LogSettings,
    ModelSettings,
    MqttSettings,
    MuteSettings,
    SearchSettings,
    Settings,
    SiteTemplate,
    TlsSettings,
    UserPath,
    WyomingSettings,
    default_data_dir,
    default_site_id,
)
from kwsd.config.sources import (
    APP_NAME,
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    RESERVED_ENV_VARS,
    default_config_file,
    nest_overrides,
    resolve_config_path,
)

__all__ = [
    "APP_NAME",
    "CONFIG_ENV_VAR",
    "ENV_PREFIX",
    "RESERVED_ENV_VARS",
    "SITE_ID_PATTERN",
    "AudioSettings",
    "HealthSettings",
    "HermesSettings",
    "HomeAssistantSettings",
    "KeywordsSettings",
    "LogSettings",
    "ModelSettings",
    "MqttSettings",
    "MuteSettings",
    "SearchSettings",
    "SettingField",
    "Settings",
    "SiteTemplate",
    "TlsSettings",
    "UserPath",
    "WyomingSettings",
    "default_config_file",
    "default_data_dir",
    "default_site_id",
    "follow",
    "load_settings",
    "lookup_field",
    "nest_overrides",
    "read_config_file",
    "resolve_config_path",
    "walk",
]
