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
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file: give a YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping {holds}")
    return data


def read_sections(
    path: str | Path,
    sections: dict[str, Any],
    check: Any,
    where: Any = None,
) -> dict[str, Any]:
    """The settings of a YAML file made of sections (``{section: {key: value}}``), flat,
    keys with underscores; an unknown section or key, or a section that is not a mapping,
    is a ConfigError naming it and the known ones. ``check(key, value, where)`` checks (and
    may convert) each value; ``where(section, key)`` says where a value came from. An empty
    section is allowed."""
    data = read_mapping(path, f"with sections {', '.join(sections)}")
    out: dict[str, Any] = {}
    for section, body in data.items():
        section = str(section)
        if section not in sections:
            raise ConfigError(
                f"config file {path}: unknown section '{section}'; known: {', '.join(sections)}"
            )
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"config file {path}: '{section}' must be a mapping of settings")
        for key, value in body.items():
            key = str(key).replace("-", "_")
            if key not in sections[section]:
                raise ConfigError(
                    f"config file {path}: unknown setting '{section}.{key}'; "
                    f"known in '{section}': {', '.join(sections[section])}"
                )
            out[key] = check(key, value, where(section, key) if where else f"{section}.{key}")
    return out
