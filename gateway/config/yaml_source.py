"""YAML loading that remembers where every value came from.

Configuration and policy errors must name the file, the line and the field. PyYAML's
``safe_load`` forgets positions, so we compose the node tree ourselves, record the line of
every mapping key and sequence item by its path, then construct plain Python values.
Duplicate keys, which ``safe_load`` silently collapses, are reported as errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class SourceError(ValueError):
    """A configuration file is unreadable or invalid; ``str()`` is the operator's message."""


@dataclass
class YamlDocument:
    """A parsed document: its data and the line (1-based) of each path inside it."""

    name: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    #: paths whose value came from elsewhere (an environment variable), with that origin
    overrides: dict[Loc, str] = field(default_factory=dict)

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of ``loc``, or of its deepest ancestor that exists in the file."""
        path = tuple(loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def where(self, loc: Sequence[str | int]) -> str:
        path = tuple(loc)
        for end in range(len(path), 0, -1):
            if path[:end] in self.overrides:
                return self.overrides[path[:end]]
        line = self.line_of(loc)
        return f"{self.name}:{line}" if line is not None else self.name


def format_loc(loc: Iterable[str | int]) -> str:
    """``("upstream", "timeouts", "connect")`` -> ``upstream.timeouts.connect``; ints as ``[i]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int], name: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SourceError(
                    f"{name}:{line}: {format_loc((*path, key))}: duplicate key "
                    f"(first defined on line {seen[key]})"
                )
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, name)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, name)


def parse_yaml(text: str, name: str) -> YamlDocument:
    """Parse one YAML document from ``text``; ``name`` is used in error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise SourceError(f"{name}{line}: invalid YAML: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise SourceError(f"{name}: invalid YAML: {exc}") from None
    if node is None:
        return YamlDocument(name=name, data=None)
    lines: dict[Loc, int] = {}
    _walk(node, (), lines, name)
    loader = yaml.SafeLoader(text)
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SourceError(f"{name}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return YamlDocument(name=name, data=data, lines=lines)


def read_yaml(path: Path) -> YamlDocument:
    """Read and parse ``path``; unreadable files raise :class:`SourceError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not valid UTF-8") from None
    return parse_yaml(text, str(path))


def _is_branch_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or "(" in part)


def validate_model(model: type[M], doc: YamlDocument) -> M:
    """Validate ``doc.data`` as ``model``.

    Every pydantic error becomes one line ``file:line: field: message``; all are reported
    at once so an operator fixes a file in one pass.
    """
    data = doc.data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors(include_url=False):
            # drop pydantic's union-branch tags ("function-after[...]") from the path
            loc = tuple(p for p in err["loc"] if not _is_branch_tag(p))
            detail = err["msg"]
            if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
                shown = repr(err["input"])
                if len(shown) <= 60 and not isinstance(err["input"], dict | list):
                    detail += f" (got {shown})"
            if err["type"] == "extra_forbidden":
                detail = "unknown field"
            messages.append(f"{doc.where(loc)}: {format_loc(loc)}: {detail}")
        raise SourceError("\n".join(messages)) from None
