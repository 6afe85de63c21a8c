"""Loading the configuration: the YAML file, then ``GATEWAY__SECTION__FIELD`` overrides from
the environment, then validation (errors name the file, the line and the field)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from gateway.config.settings import Config, Section
from gateway.config.yaml_source import (
    Loc,
    SourceError,
    YamlDocument,
    format_loc,
    read_yaml,
    validate_model,
)

ENV_PREFIX = "GATEWAY__"


def _child(annotation: Any, name: str) -> Any:
    """The type of ``name`` inside a value of type ``annotation`` (a section, or the
    mapping of ``models``), or None when unknown (validation reports it later)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _child(get_args(annotation)[0], name)
    if origin in (Union, UnionType):
        for arg in get_args(annotation):
            found = _child(arg, name)
            if found is not None:
                return found
        return None
    if origin is dict:
        return get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(name)
        return field.annotation if field is not None else None
    return None


def _shorthand(annotation: Any) -> str | None:
    """The shorthand field of a section type (``store`` -> ``type``), if it has one."""
    if get_origin(annotation) in (Union, UnionType):
        return next(filter(None, (_shorthand(a) for a in get_args(annotation))), None)
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation.shorthand
    return None


def _apply_env(doc: YamlDocument, environ: Mapping[str, str]) -> None:
    """``GATEWAY__SECTION__FIELD=value`` overrides, applied to the parsed file before
    validation. A section the file writes as a shorthand (``store: memory``) becomes
    its mapping (``{type: memory}``) when a variable names one of its fields, and a
    shorthand value for a section the file writes as a mapping sets that one field."""
    if doc.data is None:
        doc.data = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            raise SourceError(f"environment {name}: empty path segment")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node: Any = doc.data
        annotation: Any = Config
        loc: Loc = ()
        for part in parts[:-1]:
            annotation = _child(annotation, part)
            loc = (*loc, part)
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                field = _shorthand(annotation)
                if field is None:
                    raise SourceError(
                        f"environment {name}: {format_loc(loc)} is {child!r} in "
                        f"{doc.where(loc)}, not a section with fields"
                    )
                child = node[part] = {field: child}
                if loc in doc.lines:
                    doc.lines[(*loc, field)] = doc.lines[loc]
            node = child
        last = parts[-1]
        target: Loc = (*loc, last)
        field = _shorthand(_child(annotation, last))
        if field is not None and isinstance(node.get(last), dict) and not isinstance(value, dict):
            node[last][field] = value
            target = (*target, field)
        else:
            node[last] = value
        doc.overrides[target] = f"environment {name}"


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Load, override from the environment, validate. Raises :class:`SourceError`."""
    path = Path(path)
    doc = read_yaml(path)
    if doc.data is not None and not isinstance(doc.data, dict):
        raise SourceError(f"{doc.where(())}: the configuration must be a mapping")
    _apply_env(doc, os.environ if environ is None else environ)
    config = validate_model(Config, doc)
    return config.resolve_paths(path.resolve().parent)


def default_config_path() -> Path:
    return Path(os.environ.get("GATEWAY_CONFIG", "config.yaml"))
