"""Leading comments of the protos, read from the generated descriptor set, for OpenAPI descriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kasvu
from google.protobuf import descriptor_pb2

DESCRIPTOR_SET = Path(kasvu.__file__).parent / "descriptors.binpb"

# Field numbers in descriptor.proto used in SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE, _SERVICE_METHOD = 2, 2


def load_comments(path: Path = DESCRIPTOR_SET) -> dict[str, str]:
    """Full name of every message, field, enum, value, service and method -> its leading comment."""
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    comments: dict[str, str] = {}
    for file in files:
        by_path = {
            tuple(loc.path): loc.leading_comments.strip()
            for loc in file.source_code_info.location
            if loc.leading_comments.strip()
        }
        prefix = file.package + "." if file.package else ""

        def note(name: str, loc: tuple[int, ...], by_path: dict[tuple[int, ...], str] = by_path) -> None:
            if loc in by_path:
                comments[name] = " ".join(line.strip() for line in by_path[loc].splitlines())

        def walk_enum(enum: Any, name: str, loc: tuple[int, ...]) -> None:
            note(name, loc)
            for i, value in enumerate(enum.value):
                note(f"{name}.{value.name}", (*loc, _ENUM_VALUE, i))

        def walk_message(msg: Any, name: str, loc: tuple[int, ...]) -> None:
            note(name, loc)
            for i, fd in enumerate(msg.field):
                note(f"{name}.{fd.name}", (*loc, _MESSAGE_FIELD, i))
            for i, nested in enumerate(msg.nested_type):
                walk_message(nested, f"{name}.{nested.name}", (*loc, _MESSAGE_NESTED, i))
            for i, enum in enumerate(msg.enum_type):
                walk_enum(enum, f"{name}.{enum.name}", (*loc, _MESSAGE_ENUM, i))

        for i, msg in enumerate(file.message_type):
            walk_message(msg, prefix + msg.name, (_FILE_MESSAGE, i))
        for i, enum in enumerate(file.enum_type):
            walk_enum(enum, prefix + enum.name, (_FILE_ENUM, i))
        for i, service in enumerate(file.service):
            note(prefix + service.name, (_FILE_SERVICE, i))
            for j, method in enumerate(service.method):
                note(f"{prefix}{service.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j))
    return comments
