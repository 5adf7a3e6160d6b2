"""Dotted field paths of request messages, by proto or JSON names, resolved to their fields."""

from __future__ import annotations

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
