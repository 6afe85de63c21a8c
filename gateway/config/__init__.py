"""The gateway's configuration: a validated, immutable tree loaded from ``config.yaml``.

Precedence: defaults < the YAML file < environment variables ``GATEWAY__SECTION__FIELD``
(values parsed as YAML scalars, so ``GATEWAY__SERVER__PORT=8080`` is an int).

- :mod:`gateway.config.settings`: the sections, their fields and defaults;
- :mod:`gateway.config.loading`: the file, the environment overrides, validation;
- :mod:`gateway.config.signing_keys`: the token signing keys, from the environment or a file;
- :mod:`gateway.config.yaml_source`: YAML that remembers the line of every value, for
  errors that name the file, the line and the field (policies use it too).
"""

from gateway.config.loading import ENV_PREFIX, default_config_path, load_config
from gateway.config.settings import (
    MODEL_ID_PATTERN,
    AdminSettings,
    Config,
    KeyStoreSettings,
    ServerSettings,
    StoreSettings,
    UpstreamSettings,
)
from gateway.config.yaml_source import SourceError

__all__ = [
    "ENV_PREFIX",
    "MODEL_ID_PATTERN",
    "AdminSettings",
    "Config",
    "KeyStoreSettings",
    "ServerSettings",
    "SourceError",
    "StoreSettings",
    "UpstreamSettings",
    "default_config_path",
    "load_config",
]
