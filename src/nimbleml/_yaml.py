"""Reading a YAML settings file, with one error per way it can be wrong (serve, ensemble)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingDependencyError


def read_mapping(path: str | Path, holds: str) -> dict[Any, Any]:
    """The mapping at the top of a YAML file ({} for an empty file). ``holds`` says what the
    mapping should hold, for the error when the file holds something else."""
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependencyError(
            "--config needs PyYAML, which is not installed. Install it with: "
            "pip install 'nimbleml[serve]' (or pip install pyyaml)"
        ) from exc
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping {holds}")
    return data
