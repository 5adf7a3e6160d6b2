"""The OCDS validation the export tests rely on catches what it should: a check that passed
everything would make every "valid against the official schema" test pass on a broken export."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.tendering_ocds import validate_packages

RELEASE: dict[str, Any] = {
    "ocid": "ocds-test-call-1",
    "id": "ocds-test-call-1-tender-1",
    "date": "2026-11-02T09:00:00Z",
    "tag": ["tender"],
    "initiationType": "tender",
    "tender": {"id": "call-1", "status": "active"},
}


def packages(release: dict[str, Any], record: dict[str, Any]) -> tuple[str, str]:
    release_package = {
        "uri": "https://example.org/ocds/call-1/releases",
        "version": "1.1",
        "publishedDate": "2026-11-02T09:00:00Z",
        "publisher": {"name": "Kasvu"},
        "releases": [release],
    }
    record_package = {
        "uri": "https://example.org/ocds/call-1/records",
        "version": "1.1",
        "publishedDate": "2026-11-02T09:00:00Z",
        "publisher": {"name": "Kasvu"},
        "records": [record],
    }
    return json.dumps(release_package), json.dumps(record_package)


def record_of(release: dict[str, Any]) -> dict[str, Any]:
    return {"ocid": release["ocid"], "releases": [release], "compiledRelease": release}


def test_a_well_formed_release_and_record_package_validate() -> None:
    validate_packages(*packages(RELEASE, record_of(RELEASE)))


def test_a_record_may_link_its_releases_instead_of_embedding_them() -> None:
    linked = {"url": "https://example.org/ocds/call-1/releases#1", "date": RELEASE["date"], "tag": ["tender"]}
    validate_packages(*packages(RELEASE, {"ocid": RELEASE["ocid"], "releases": [linked]}))


def broken(change: str) -> tuple[str, str]:
    release, record = copy.deepcopy(RELEASE), record_of(copy.deepcopy(RELEASE))
    if change == "release without a tag":
        del release["tag"]
    elif change == "release whose tag is not a list":
        release["tag"] = "tender"
    elif change == "record without an ocid":
        del record["ocid"]
    elif change == "record with an empty release list":
        record["releases"] = []
    elif change == "record whose embedded release has no date":
        del record["releases"][0]["date"]
    elif change == "compiled release with a bad status":
        record["compiledRelease"]["tender"]["status"] = "sealed"
    elif change == "linked release without a url":
        record["releases"] = [{"date": RELEASE["date"], "tag": ["tender"]}]
    return packages(release, record)


@pytest.mark.parametrize(
    "change",
    [
        "release without a tag",
        "release whose tag is not a list",
        "record without an ocid",
        "record with an empty release list",
        "record whose embedded release has no date",
        "compiled release with a bad status",
        "linked release without a url",
    ],
)
def test_a_package_that_breaks_the_standard_is_refused(change: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_packages(*broken(change))
