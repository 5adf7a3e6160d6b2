"""Validation of tendering's OCDS exports against the standard's own schemas (copied into
tests/data/ocds/), shared by the integration and end-to-end tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SCHEMAS = Path(__file__).parent / "data" / "ocds"


@cache
def _registry() -> Registry[Any]:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text(encoding="utf-8"))
        resources.append((schema["id"], Resource.from_contents(schema, default_specification=DRAFT4)))
    return Registry().with_resources(resources)


def _validator(name: str) -> jsonschema.Draft4Validator:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return jsonschema.Draft4Validator(
        schema, registry=_registry(), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )


def validate_packages(release_package_json: str, record_package_json: str) -> None:
    """Raises jsonschema.ValidationError naming the first place either package breaks the schema;
    every release is also validated on its own against release-schema.json."""
    releases = json.loads(release_package_json)
    records = json.loads(record_package_json)
    _validator("release-package-schema.json").validate(releases)
    for release in releases["releases"]:
        _validator("release-schema.json").validate(release)
    _validator("record-package-schema.json").validate(records)
    assert releases["releases"], "a package with no releases proves nothing"
    assert records["records"], "a package with no records proves nothing"
