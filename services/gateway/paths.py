"""Path templates of google.api.http bindings (the google/api/http.proto grammar): parsing,
matching request paths, and their OpenAPI spelling."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class Variable:
    """A template variable: a request field path bound to one or more path segments."""

    field_path: str
    segments: tuple[str, ...]


Segment = str | Variable


def _split_top(text: str, sep: str) -> list[str]:
    """Splits at `sep` outside braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _singular(collection: str) -> str:
    if collection.endswith(("ches", "shes", "sses", "xes")):
        return collection[:-2]
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith("s") and len(collection) > 1:
        return collection[:-1]
    return collection + "Id"


@dataclass(frozen=True)
class PathTemplate:
    """A parsed path template such as `/v1/{parent=regions/*}/alerts:stream`."""

    template: str
    segments: tuple[Segment, ...]
    verb: str | None
    regex: re.Pattern[str]
    group_fields: tuple[str, ...]
    """Field path of each regex group, in group order (groups are named v0, v1, ...)."""

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        if not template.startswith("/"):
            raise ValueError(f"path template must start with '/': {template!r}")
        rest = template[1:]
        verb: str | None = None
        last = _split_top(rest, "/")[-1]
        colon_parts = _split_top(last, ":")
        if len(colon_parts) == 2:
            verb = colon_parts[1]
            rest = rest[: len(rest) - len(verb) - 1]
        elif len(colon_parts) > 2:
            raise ValueError(f"more than one custom verb in {template!r}")
        segments: list[Segment] = []
        for part in _split_top(rest, "/"):
            if part.startswith("{"):
                if not part.endswith("}"):
                    raise ValueError(f"unbalanced braces in {template!r}")
                field_path, _, sub = part[1:-1].partition("=")
                if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", field_path):
                    raise ValueError(f"bad field path {field_path!r} in {template!r}")
                segments.append(Variable(field_path, tuple((sub or "*").split("/"))))
            elif not part or "{" in part or "}" in part:
                raise ValueError(f"bad segment {part!r} in {template!r}")
            else:
                segments.append(part)
        regex, fields = cls._compile(segments, verb)
        return cls(template, tuple(segments), verb, regex, fields)

    @staticmethod
    def _compile(segments: Iterable[Segment], verb: str | None) -> tuple[re.Pattern[str], tuple[str, ...]]:
        def plain(seg: str) -> str:
            # A `*` is exactly one segment; `**` the rest of the path.
            return {"*": "[^/]+", "**": ".+"}.get(seg, re.escape(seg))

        fields: list[str] = []
        parts: list[str] = []
        for seg in segments:
            if isinstance(seg, Variable):
                parts.append(f"(?P<v{len(fields)}>{'/'.join(plain(s) for s in seg.segments)})")
                fields.append(seg.field_path)
            else:
                parts.append(plain(seg))
        pattern = "/" + "/".join(parts) + (":" + re.escape(verb) if verb else "")
        return re.compile(pattern), tuple(fields)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Field path -> percent-decoded value, or None when the path does not match."""
        found = self.regex.fullmatch(raw_path)
        if found is None:
            return None
        return {f: unquote(found.group(f"v{i}")) for i, f in enumerate(self.group_fields)}

    def openapi_path(self) -> tuple[str, list[tuple[str, str]]]:
        """An OpenAPI path with one parameter per `*` segment, and (parameter, field path) pairs.

        `{name=regions/*/services/*}` becomes `regions/{region}/services/{service}`: each
        parameter is named after the collection before it, singularised, so the
        document stays valid OpenAPI (parameters cannot hold '/') and reads as the
        resource name it builds. A `**` becomes one parameter named after its field.
        """
        params: list[tuple[str, str]] = []
        used: set[str] = set()

        def param(base: str, field_path: str) -> str:
            name, n = base, 2
            while name in used:
                name, n = f"{base}{n}", n + 1
            used.add(name)
            params.append((name, field_path))
            return "{" + name + "}"

        out: list[str] = []
        for seg in self.segments:
            subs = seg.segments if isinstance(seg, Variable) else (seg,)
            field_path = seg.field_path if isinstance(seg, Variable) else ""
            for i, sub in enumerate(subs):
                if sub == "*":
                    before = subs[i - 1] if i > 0 else (out[-1] if out else "")
                    literal = before not in ("*", "**") and not before.startswith("{")
                    fallback = field_path.replace(".", "_") or "segment"
                    base = _singular(before) if before and literal else fallback
                    out.append(param(base, field_path))
                elif sub == "**":
                    out.append(param(field_path.replace(".", "_") or "path", field_path))
                else:
                    out.append(sub)
        return "/" + "/".join(out) + (":" + self.verb if self.verb else ""), params
