"""Dotted field paths of request messages, by proto or JSON names, resolved to their fields."""

from __future__ import annotations

import re

from google.protobuf.descriptor import Descriptor, FieldDescriptor


def resolve_field_path(descriptor: Descriptor, dotted: str) -> list[FieldDescriptor] | None:
    """The fields along a dotted path, accepting proto or JSON names; None if there is no such path."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for name in dotted.split("."):
        if current is None:
            return None
        found = current.fields_by_name.get(name) or next(
            (f for f in current.fields if f.json_name == name), None
        )
        if found is None:
            return None
        fields.append(found)
        current = found.message_type
    return fields


def is_repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


_PATH_PART = re.compile(r"([^.\[]+)((?:\[[^\]]*\])*)")


def json_field_path(descriptor: Descriptor, path: str) -> str:
    """A field path in proto names, as services report it ("terms.requirements[0].max_age_days"),
    spelled in the JSON names an HTTP client sent ("terms.requirements[0].maxAgeDays").

    Parts that name no field (a header such as "Last-Event-ID", or a path past a scalar) are
    kept as they are.
    """
    current: Descriptor | None = descriptor
    parts: list[str] = []
    for part in path.split("."):
        match = _PATH_PART.fullmatch(part)
        found = current.fields_by_name.get(match.group(1)) if current is not None and match else None
        if match is None or found is None:
            parts.append(part)
            current = None
            continue
        parts.append(found.json_name + match.group(2))
        entry = found.message_type
        if entry is not None and entry.GetOptions().map_entry and match.group(2):
            entry = entry.fields_by_name["value"].message_type
        current = entry
    return ".".join(parts)
