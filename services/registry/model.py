"""The provider registry's domain: terms, evidence, commitment and the admission decision."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from services.runtime.domain import (
    FINLAND,
    Aggregate,
    Event,
    ResourcePattern,
    check_text,
    ed25519_public_key,
    finnish_date,
    key_fingerprint,
    raise_if_any,
    require_aware,
    validate_business_id,
    validate_resource_id,
    verify_with_any,
)
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

__all__ = [
    "ACTIVE_STATES",
    "BREACH_POLICY",
    "CONTACT_DETAILS",
    "CONTACT_FIELDS",
    "DEFAULT_MAX_AGE_DAYS",
    "DEFAULT_RECOMMIT_DAYS",
    "DEFAULT_VALID_DAYS",
    "EVENTS",
    "GENERAL_TERMS",
    "MAX_REGISTRATION_KEYS",
    "MUNICIPALITIES",
    "ORGANISER",
    "PROVIDER",
    "REGISTRATION",
    "RENEWAL_REMINDER_DAYS",
    "SERVICE",
    "TERMS",
    "Attribute",
    "BreachPolicy",
    "CatalogueService",
    "ContactChanges",
    "ContactDetails",
    "Decider",
    "Decision",
    "DecisionKind",
    "Evidence",
    "EvidenceRenewalDue",
    "EvidenceRenewed",
    "GeneralTerms",
    "GeneralTermsPublished",
    "LegalForm",
    "Listing",
    "MarketFailure",
    "Organiser",
    "OrganiserKind",
    "ProviderContactDetailsChanged",
    "ProviderRegistered",
    "ProviderReinstated",
    "ProviderRevoked",
    "ProviderSuspended",
    "Reason",
    "ReasonCode",
    "Registration",
    "RegistrationAdmitted",
    "RegistrationDraftUpdated",
    "RegistrationDrafted",
    "RegistrationInReview",
    "RegistrationKey",
    "RegistrationKeyAdded",
    "RegistrationKeyRetired",
    "RegistrationLapsed",
    "RegistrationRecommitted",
    "RegistrationRejected",
    "RegistrationState",
    "RegistrationWithdrawn",
    "Requirement",
    "RequirementKind",
    "Section",
    "SectionTopic",
    "Terms",
    "TermsDiff",
    "TermsPublished",
    "TermsSuperseded",
    "assess_attributes",
    "assess_evidence",
    "decide_registration",
    "diff_terms",
    "draft_registration",
    "evidence_expiry",
    "new_breach_policy",
    "new_general_terms",
    "new_service",
    "new_terms",
    "parse_requirement_kind",
    "publish_general_terms",
    "publish_terms",
    "refuse_aged_evidence",
    "refuse_future_evidence",
    "reissue_terms",
    "require_market_failure",
    "uncovered",
    "validate_areas",
    "validate_business_id",
    "validate_list_filter",
    "validate_reasons",
    "validate_resource_id",
    "verify_commitment",
    "verify_with_any",
]

DEFAULT_MAX_AGE_DAYS = 90
"""Three months: the most a tax or insurance certificate may age under service-voucher practice."""

DEFAULT_VALID_DAYS = 365
"""Twelve months: how long a document stands before it must be renewed (contractor-liability practice)."""

DEFAULT_RECOMMIT_DAYS = 30
"""How long admitted providers have to commit to a new terms version before they lapse."""

RENEWAL_REMINDER_DAYS = 30
"""How long before a document expires the provider is reminded to renew it."""

MAX_RECOMMIT_DAYS = 365
LEGAL_BASIS_MAX_LENGTH = 500
MAX_AREAS = 400

MAX_MAX_AGE_DAYS = 3650
TITLE_MAX_LENGTH = 200
DISPLAY_NAME_MAX_LENGTH = 200
CODE_MAX_LENGTH = 100
DESCRIPTION_MAX_LENGTH = 2000
MAX_REQUIREMENTS = 100
MAX_SECTIONS = 50
SECTION_TEXT_MAX_LENGTH = 20_000
"""A clause may be long (a price schedule, an invoicing procedure), but the signed form must stay small."""
MAX_REASONS = MAX_REQUIREMENTS
"""The most reasons a person's decision gives: a decision record and its event must stay small."""

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

SERVICE = ResourcePattern("regions/{region}/services/{service}")
TERMS = ResourcePattern("regions/{region}/services/{service}/terms/{version:int}")
GENERAL_TERMS = ResourcePattern("regions/{region}/generalTerms/{version:int}")
REGISTRATION = ResourcePattern("regions/{region}/services/{service}/registrations/{registration:key}")


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TermsPublished(Event):
    """A region published a new terms version."""

    terms: str
    region: str
    service: str
    content_hash: str
    publish_time: datetime
    general_terms: str = ""
    """The general part the version pins, "" when the region had none."""


@dataclass(frozen=True)
class GeneralTermsPublished(Event):
    """A region published a new version of the general part of its rulebook."""

    general_terms: str
    region: str
    content_hash: str
    publish_time: datetime


@dataclass(frozen=True)
class RegistrationEvent(Event):
    """What every event about one registration names first: it, its terms, organiser, service, provider."""

    registration: str
    terms: str
    region: str
    service: str
    business_id: str


@dataclass(frozen=True)
class TermsSuperseded(Event):
    """A newer terms version replaced this one; admitted providers must re-commit by the deadline."""

    terms: str
    region: str
    service: str
    superseded_by: str
    recommit_deadline: datetime
    supersede_time: datetime


@dataclass(frozen=True)
class ProviderRegistered(RegistrationEvent):
    """A provider submitted a registration; the decision follows in its own event."""

    register_time: datetime


@dataclass(frozen=True)
class RegistrationAdmitted(RegistrationEvent):
    """A provider was admitted: it met every requirement and committed to the terms."""

    admit_time: datetime
    municipalities: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistrationRejected(RegistrationEvent):
    """A registration was refused, with a reason code per unmet requirement."""

    reason_codes: tuple[str, ...]
    decide_time: datetime
    reason_subjects: tuple[str, ...] = ()
    """What each reason refers to (the unmet requirement's code), in reason_codes' order."""


@dataclass(frozen=True)
class RegistrationDrafted(RegistrationEvent):
    """A provider kept a registration as a draft; nothing is decided until it is submitted."""

    draft_time: datetime


@dataclass(frozen=True)
class RegistrationDraftUpdated(RegistrationEvent):
    """A provider changed its draft registration."""

    fields: tuple[str, ...]
    update_time: datetime


@dataclass(frozen=True)
class RegistrationInReview(RegistrationEvent):
    """The automatic requirements hold and a person of the region must decide the rest."""

    review_time: datetime


@dataclass(frozen=True)
class ProviderSuspended(Event):
    """An admitted provider was suspended in a region for a service."""

    registration: str
    region: str
    service: str
    business_id: str
    breach: str
    suspend_time: datetime
    terms: str = ""
    reason_codes: tuple[str, ...] = ()
    lift_time: datetime | None = None


@dataclass(frozen=True)
class ProviderReinstated(RegistrationEvent):
    """A suspension ended: by a person's decision, by its timed lift, or when the breach was resolved."""

    reason_codes: tuple[str, ...]
    reinstate_time: datetime


@dataclass(frozen=True)
class RegistrationLapsed(RegistrationEvent):
    """An admission ended by itself: terms not re-committed in time, or evidence expired."""

    reason_codes: tuple[str, ...]
    lapse_time: datetime


@dataclass(frozen=True)
class ProviderRevoked(RegistrationEvent):
    """The region removed a provider's admission for good, with reasons."""

    reason_codes: tuple[str, ...]
    revoke_time: datetime


@dataclass(frozen=True)
class RegistrationWithdrawn(RegistrationEvent):
    """The provider withdrew its registration; the codes of its reasons, if it gave any."""

    withdraw_time: datetime
    reason_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistrationRecommitted(RegistrationEvent):
    """An admitted provider committed to the current terms version within the re-commit window."""

    recommit_time: datetime


@dataclass(frozen=True)
class EvidenceRenewed(RegistrationEvent):
    """A provider renewed the document behind an admission's requirement before it expired."""

    requirement_code: str
    expire_time: datetime
    """When the renewed document expires (the admission's expiry is its earliest document's)."""
    renew_time: datetime


@dataclass(frozen=True)
class ProviderKeyRotated(RegistrationEvent):
    """A provider replaced the key it commits to terms with; the old key signed the new one."""

    rotate_time: datetime


@dataclass(frozen=True)
class RegistrationKeyAdded(RegistrationEvent):
    """A provider added a key to its registration; the key is named by its fingerprint only."""

    key_fingerprint: str
    add_time: datetime


@dataclass(frozen=True)
class RegistrationKeyRetired(RegistrationEvent):
    """A provider retired one of its registration's keys; named by its fingerprint only."""

    key_fingerprint: str
    retire_time: datetime


@dataclass(frozen=True)
class EvidenceRenewalDue(RegistrationEvent):
    """A reminder: a document behind the admission expires soon and must be renewed."""

    requirement_code: str
    expire_time: datetime
    remind_time: datetime


@dataclass(frozen=True)
class ProviderContactDetailsChanged(Event):
    """A provider changed how the regions reach it. Identifiers only: the person's name, the
    address and the number are personal data and stay in the registry (DOMAIN.md, "Data")."""

    contact_details: str
    business_id: str
    change_time: datetime

    @property
    def subject_key(self) -> str:
        # The details are the provider's in every region, so the subject ends in its business ID
        # (as a bidder's keys do in tendering) rather than in an organiser.
        return self.business_id


EVENTS: tuple[type[Event], ...] = (
    TermsPublished,
    GeneralTermsPublished,
    TermsSuperseded,
    ProviderRegistered,
    RegistrationAdmitted,
    RegistrationRejected,
    RegistrationInReview,
    ProviderSuspended,
    ProviderReinstated,
    RegistrationLapsed,
    ProviderRevoked,
    RegistrationWithdrawn,
    RegistrationRecommitted,
    EvidenceRenewalDue,
    EvidenceRenewed,
    ProviderKeyRotated,
    RegistrationDrafted,
    RegistrationDraftUpdated,
    RegistrationKeyAdded,
    RegistrationKeyRetired,
    ProviderContactDetailsChanged,
)


class Decider(StrEnum):
    """Who decides whether a requirement is met."""

    AUTOMATIC = "AUTOMATIC"
    """The registry, from the evidence, at once."""
    PERSON = "PERSON"
    """A person of the region: the registration waits in review."""


class RequirementKind(StrEnum):
    """How a requirement is shown to be met."""

    DECLARATION = "DECLARATION"
    DOCUMENT = "DOCUMENT"
    ATTRIBUTE_CHECK = "ATTRIBUTE_CHECK"
    """The registration's own attributes (languages, area, price, qualifications) are checked."""


class Attribute(StrEnum):
    """Which attribute of a registration an attribute check reads."""

    UNSPECIFIED = "UNSPECIFIED"
    LANGUAGES = "LANGUAGES"
    """Every language of the requirement's values is offered."""
    SERVICE_AREA = "SERVICE_AREA"
    """At least one municipality is named and every one is among the requirement's values."""
    PRICE_CEILING = "PRICE_CEILING"
    """A price is given and is at most the requirement's price ceiling."""
    STAFF_QUALIFICATION = "STAFF_QUALIFICATION"
    """Every qualification of the requirement's values is declared."""


def parse_requirement_kind(name: str, field: str) -> RequirementKind:
    """The kind named "DECLARATION"/"DOCUMENT"/"ATTRIBUTE_CHECK" (the proto's "REQUIREMENT_KIND_"
    prefix allowed). Anything else, the proto's UNSPECIFIED included, is refused.
    """
    try:
        return RequirementKind(name.removeprefix("REQUIREMENT_KIND_"))
    except ValueError:
        description = "must be DECLARATION, DOCUMENT or ATTRIBUTE_CHECK"
        raise InvalidArgument(description, [FieldViolation(field, description)]) from None


@dataclass(frozen=True)
class Requirement:
    """One requirement of the terms, e.g. entry in the prepayment register."""

    code: str
    description: str
    kind: RequirementKind
    max_age_days: int = DEFAULT_MAX_AGE_DAYS
    """For documents: the oldest a document may be on the day it is submitted."""
    decided_by: Decider = Decider.AUTOMATIC
    legal_basis: str = ""
    """The law or rule the requirement rests on, e.g. "569/2009 5 §"."""
    valid_days: int = DEFAULT_VALID_DAYS
    """For documents: how long after its issue a document stands; the admission lapses after it."""
    attribute: Attribute = Attribute.UNSPECIFIED
    """For attribute checks: the attribute checked."""
    values: tuple[str, ...] = ()
    """For attribute checks of languages, service area and qualifications: the codes checked against."""
    price_ceiling: Decimal | None = None
    """For a price-ceiling check: the highest price admitted, in euros."""


class SectionTopic(StrEnum):
    """What a clause of the rulebook is about: the parts the rulebook of a service voucher or
    registration scheme must cover, and OTHER for the rest."""

    ELIGIBLE_CUSTOMERS = "ELIGIBLE_CUSTOMERS"
    TIME_LIMITS = "TIME_LIMITS"
    PREMISES = "PREMISES"
    STAFF_QUALIFICATIONS = "STAFF_QUALIFICATIONS"
    CONTENT = "CONTENT"
    FEEDBACK_AND_REPORTING = "FEEDBACK_AND_REPORTING"
    """Customer feedback and reporting to the organiser."""
    QUALITY_MANAGEMENT = "QUALITY_MANAGEMENT"
    PRICE_AND_INVOICING = "PRICE_AND_INVOICING"
    OTHER = "OTHER"


@dataclass(frozen=True)
class Section:
    """One clause of the rulebook: its topic and its text, as published."""

    topic: SectionTopic
    text: str


def _canonical_sections(sections: Sequence[Section]) -> list[dict[str, str]]:
    return [{"topic": str(section.topic), "text": section.text} for section in sections]


def _canonical(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class GeneralTerms(Aggregate):
    """One immutable, published version of the general part of a region's rulebook: the
    requirements and clauses that hold for every service the region organises."""

    region: str
    version: int
    title: str
    requirements: tuple[Requirement, ...]
    sections: tuple[Section, ...] = ()
    published_at: datetime | None = field(default=None, compare=False)
    """When the version was published; not part of the content providers sign."""

    @property
    def name(self) -> str:
        return GENERAL_TERMS.format(region=self.region, version=self.version)

    @property
    def canonical_json(self) -> bytes:
        """The canonical form of the general part, written as Terms.canonical_json is, of the
        object {"region", "version", "title", "requirements": [...], "sections": [{"topic",
        "text"}, ...]}: requirements as in Terms.canonical_json, sections in published order,
        topic as e.g. "PRICE_AND_INVOICING". Service terms that pin this part sign its hash."""
        return _canonical(
            {
                "region": self.region,
                "version": self.version,
                "title": self.title,
                "requirements": [_canonical_requirement(r) for r in self.requirements],
                "sections": _canonical_sections(self.sections),
            }
        )

    @property
    def content_hash(self) -> str:
        """Lowercase hex SHA-256 of canonical_json."""
        return hashlib.sha256(self.canonical_json).hexdigest()


@dataclass(frozen=True)
class Terms(Aggregate):
    """One immutable, published version of a region's terms (sääntökirja) for a service: its
    service part (requirements and sections) and the general part it pins, if the region has one."""

    region: str
    service: str
    version: int
    title: str
    requirements: tuple[Requirement, ...]
    """The service part's own requirements; `all_requirements` adds the general part's."""
    published_at: datetime | None = field(default=None, compare=False)
    """When the version was published; not part of the content providers sign."""
    sections: tuple[Section, ...] = ()
    """The service part's clauses."""
    general: GeneralTerms | None = None
    """The general part current when this version was published; None when the region had none."""

    @property
    def name(self) -> str:
        return TERMS.format(region=self.region, service=self.service, version=self.version)

    @property
    def general_terms_name(self) -> str:
        return self.general.name if self.general is not None else ""

    @property
    def all_requirements(self) -> tuple[Requirement, ...]:
        """What a provider must meet: the general part's requirements, then the service part's."""
        return (*(self.general.requirements if self.general else ()), *self.requirements)

    @property
    def canonical_json(self) -> bytes:
        """The canonical form providers hash and sign.

        UTF-8 JSON, keys sorted at every level, no whitespace (separators "," and ":"),
        non-ASCII characters written as-is (not \\u-escaped), of the object
        {"region", "service", "version", "title", "requirements": [{"code",
        "description", "kind", "max_age_days", "decided_by", "legal_basis",
        "valid_days"}, ...]}, requirements in published order, kind as
        "DECLARATION" or "DOCUMENT", decided_by as "AUTOMATIC" or "PERSON",
        version, max_age_days and valid_days as JSON integers. An attribute check
        (kind "ATTRIBUTE_CHECK") also has "attribute" (e.g. "LANGUAGES"), "values" (a list
        of strings, in published order) and "price_ceiling" (decimal euros as a string, ""
        when not set); other kinds have none of the three, so their hashes are as before.
        For example:
        {"region":"uusimaa","requirements":[{"code":"tax","decided_by":"AUTOMATIC",
        "description":"Verovelkatodistus","kind":"DOCUMENT","legal_basis":"569/2009 5 §",
        "max_age_days":90,"valid_days":365}],"service":"recruitment","title":"Rekrytointi","version":1}

        The service part's clauses, when it has any, are "sections": [{"topic", "text"}, ...]
        in published order, topic as e.g. "PRICE_AND_INVOICING". The general part the version
        pins, when the region has one, is "general_terms": {"name", "content_hash"}: its name
        (regions/{region}/generalTerms/{version}) and the hex SHA-256 of its own canonical form
        (GeneralTerms.canonical_json), so signing this hash commits to both parts. Requirements
        lists the service part's own only. Terms without sections and without a general part
        have neither key, so their hashes are as before.
        """
        document: dict[str, object] = {
            "region": self.region,
            "service": self.service,
            "version": self.version,
            "title": self.title,
            "requirements": [_canonical_requirement(requirement) for requirement in self.requirements],
        }
        if self.sections:
            document["sections"] = _canonical_sections(self.sections)
        if self.general is not None:
            document["general_terms"] = {"name": self.general.name, "content_hash": self.general.content_hash}
        return _canonical(document)

    @property
    def content_hash(self) -> str:
        """Lowercase hex SHA-256 of canonical_json; a provider commits by signing its 32 raw bytes."""
        return hashlib.sha256(self.canonical_json).hexdigest()

    def requirement(self, code: str) -> Requirement | None:
        """The requirement with this code in either part, if the terms have one."""
        return next((r for r in self.all_requirements if r.code == code), None)

    @property
    def needs_a_person(self) -> bool:
        """Whether a person of the region decides part of these terms (either part)."""
        return any(r.decided_by == Decider.PERSON for r in self.all_requirements)

    def supersede(self, newer: Terms, now: datetime, recommit_days: int) -> datetime:
        """Records that `newer` replaced this version; returns the re-commit deadline."""
        deadline = require_aware(now) + timedelta(days=recommit_days)
        self.record(TermsSuperseded(self.name, self.region, self.service, newer.name, deadline, now))
        return deadline


def _canonical_requirement(requirement: Requirement) -> dict[str, object]:
    canonical: dict[str, object] = {
        "code": requirement.code,
        "description": requirement.description,
        "kind": str(requirement.kind),
        "max_age_days": requirement.max_age_days,
        "decided_by": str(requirement.decided_by),
        "legal_basis": requirement.legal_basis,
        "valid_days": requirement.valid_days,
    }
    if requirement.kind == RequirementKind.ATTRIBUTE_CHECK:
        canonical["attribute"] = str(requirement.attribute)
        canonical["values"] = list(requirement.values)
        canonical["price_ceiling"] = (
            "" if requirement.price_ceiling is None else str(requirement.price_ceiling)
        )
    return canonical


def diff_terms(old: Terms, new: Terms) -> TermsDiff:
    """What changed between two versions of the same terms: requirements by code across both
    parts (what a provider must meet), the topics whose clauses changed in either part, the title
    and the general part pinned."""
    old_codes = {r.code: r for r in old.all_requirements}
    new_codes = {r.code: r for r in new.all_requirements}
    return TermsDiff(
        from_terms=old.name,
        to_terms=new.name,
        added=tuple(code for code in new_codes if code not in old_codes),
        removed=tuple(code for code in old_codes if code not in new_codes),
        changed=tuple(
            code
            for code, requirement in new_codes.items()
            if code in old_codes and old_codes[code] != requirement
        ),
        title_changed=old.title != new.title,
        changed_topics=tuple(topic for topic in SectionTopic if _clauses(old, topic) != _clauses(new, topic)),
        from_general_terms=old.general_terms_name,
        to_general_terms=new.general_terms_name,
    )


def _clauses(terms: Terms, topic: SectionTopic) -> tuple[str, ...]:
    general = terms.general.sections if terms.general is not None else ()
    return tuple(s.text for s in (*general, *terms.sections) if s.topic == topic)


@dataclass(frozen=True)
class TermsDiff:
    """Requirement codes added, removed and changed from one terms version to another, the
    clauses' topics that changed, and the general parts each version pins."""

    from_terms: str
    to_terms: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    title_changed: bool
    changed_topics: tuple[SectionTopic, ...] = ()
    from_general_terms: str = ""
    to_general_terms: str = ""

    @property
    def general_terms_changed(self) -> bool:
        return self.from_general_terms != self.to_general_terms


def publish_terms(  # noqa: PLR0917 - new_terms' arguments and the instant
    region: str,
    service: str,
    version: int,
    title: str,
    requirements: Sequence[Requirement],
    now: datetime,
    *,
    sections: Sequence[Section] = (),
    general: GeneralTerms | None = None,
) -> Terms:
    """Validate and publish a terms version at `now`, pinning `general` (the region's current
    general part, if any); records TermsPublished."""
    require_aware(now)
    draft = new_terms(region, service, version, title, requirements, sections=sections, general=general)
    terms = replace(draft, published_at=now)
    terms.record(
        TermsPublished(terms.name, region, service, terms.content_hash, now, terms.general_terms_name)
    )
    return terms


def reissue_terms(current: Terms, general: GeneralTerms, now: datetime) -> Terms:
    """The next version of a service's terms: the same service part, pinned to a new general part.
    How a new general part reaches every service: the version it replaces is superseded as any
    is, so admitted providers re-commit to the whole rulebook."""
    return publish_terms(
        current.region,
        current.service,
        current.version + 1,
        current.title,
        current.requirements,
        now,
        sections=current.sections,
        general=general,
    )


def new_terms(
    region: str,
    service: str,
    version: int,
    title: str,
    requirements: Sequence[Requirement],
    *,
    sections: Sequence[Section] = (),
    general: GeneralTerms | None = None,
) -> Terms:
    """Validate and build a terms version; every violation is reported at once.

    A max_age_days of 0 means "not given" (proto3 cannot tell the two apart) and
    becomes the three-month default. A requirement code must be unique across both parts:
    one the general part already has is refused. With a general part that has requirements,
    the service part may have none of its own.
    """
    if version < 1:
        # Versions are assigned by the registry, never by the client.
        raise ValueError(f"terms version must be at least 1, got {version}")
    violations: list[FieldViolation] = []
    for value, name in ((region, "region"), (service, "service")):
        try:
            validate_resource_id(value, "parent")
        except InvalidArgument as error:
            violations.extend(FieldViolation(v.field, f"{name} {v.description}") for v in error.violations)
    if (violation := check_text(title, "terms.title", TITLE_MAX_LENGTH)) is not None:
        violations.append(violation)
    if not requirements and not (general is not None and general.requirements):
        violations.append(FieldViolation("terms.requirements", "must list at least one requirement"))
    taken = {r.code: f"the general part {general.name}" for r in general.requirements} if general else {}
    found, normalised = _requirements(requirements, "terms", taken)
    violations.extend(found)
    violations.extend(_section_violations(sections, "terms"))
    raise_if_any(violations, "the terms are invalid")
    return Terms(region, service, version, title, normalised, sections=tuple(sections), general=general)


def publish_general_terms(  # noqa: PLR0917 - new_general_terms' arguments and the instant
    region: str,
    version: int,
    title: str,
    requirements: Sequence[Requirement],
    sections: Sequence[Section],
    now: datetime,
    *,
    services: Sequence[Terms] = (),
) -> GeneralTerms:
    """Validate and publish a version of the general part at `now`; records GeneralTermsPublished.
    `services` are the region's current service terms, whose codes the new part must not take."""
    require_aware(now)
    draft = new_general_terms(region, version, title, requirements, sections, services=services)
    general = replace(draft, published_at=now)
    general.record(GeneralTermsPublished(general.name, region, general.content_hash, now))
    return general


def new_general_terms(
    region: str,
    version: int,
    title: str,
    requirements: Sequence[Requirement],
    sections: Sequence[Section],
    *,
    services: Sequence[Terms] = (),
) -> GeneralTerms:
    """Validate and build a version of the general part; every violation at once. A code that a
    current service part of the region already uses is refused: the service terms re-issued on
    the new part would hold it twice."""
    if version < 1:
        raise ValueError(f"general terms version must be at least 1, got {version}")
    violations: list[FieldViolation] = []
    try:
        validate_resource_id(region, "parent")
    except InvalidArgument as error:
        violations.extend(error.violations)
    if (violation := check_text(title, "general_terms.title", TITLE_MAX_LENGTH)) is not None:
        violations.append(violation)
    if not requirements and not sections:
        violations.append(FieldViolation("general_terms", "must hold at least one requirement or section"))
    taken = {r.code: f"the service terms {terms.name}" for terms in services for r in terms.requirements}
    found, normalised = _requirements(requirements, "general_terms", taken)
    violations.extend(found)
    violations.extend(_section_violations(sections, "general_terms"))
    raise_if_any(violations, "the general terms are invalid")
    return GeneralTerms(region, version, title, normalised, tuple(sections))


def _requirements(
    requirements: Sequence[Requirement], prefix: str, taken: dict[str, str]
) -> tuple[list[FieldViolation], tuple[Requirement, ...]]:
    """What is wrong with a part's requirements, and them with their defaults filled in. `taken`
    maps the codes the other part holds to what holds them."""
    violations: list[FieldViolation] = []
    if len(requirements) > MAX_REQUIREMENTS:
        # A cap on every repeated field: the event and the signed canonical form must stay small.
        violations.append(
            FieldViolation(f"{prefix}.requirements", f"must list at most {MAX_REQUIREMENTS} requirements")
        )
        requirements = requirements[:MAX_REQUIREMENTS]
    normalised: list[Requirement] = []
    seen_codes: set[str] = set()
    for index, requirement in enumerate(requirements):
        path = f"{prefix}.requirements[{index}]"
        if (violation := check_text(requirement.code, f"{path}.code", CODE_MAX_LENGTH)) is not None:
            violations.append(violation)
        elif requirement.code in seen_codes:
            violations.append(FieldViolation(f"{path}.code", f"duplicates code {requirement.code!r}"))
        elif requirement.code in taken:
            violations.append(
                FieldViolation(
                    f"{path}.code", f"code {requirement.code!r} is already used by {taken[requirement.code]}"
                )
            )
        seen_codes.add(requirement.code)
        violations.extend(_requirement_violations(requirement, path))
        max_age_days = requirement.max_age_days or DEFAULT_MAX_AGE_DAYS
        valid_days = requirement.valid_days or DEFAULT_VALID_DAYS
        normalised.append(replace(requirement, max_age_days=max_age_days, valid_days=valid_days))
    return violations, tuple(normalised)


def _section_violations(sections: Sequence[Section], prefix: str) -> list[FieldViolation]:
    """Each clause names a topic and has text; a part holds at most MAX_SECTIONS of them."""
    if len(sections) > MAX_SECTIONS:
        return [FieldViolation(f"{prefix}.sections", f"must list at most {MAX_SECTIONS} sections")]
    violations: list[FieldViolation] = []
    for index, section in enumerate(sections):
        path = f"{prefix}.sections[{index}]"
        if not isinstance(section.topic, SectionTopic):
            violations.append(FieldViolation(f"{path}.topic", f"must be one of {', '.join(SectionTopic)}"))
        if (violation := check_text(section.text, f"{path}.text", SECTION_TEXT_MAX_LENGTH)) is not None:
            violations.append(violation)
    return violations


def _requirement_violations(requirement: Requirement, path: str) -> list[FieldViolation]:
    """What is wrong with one requirement beyond its code (which needs the others to check)."""
    found: list[FieldViolation] = []
    if violation := check_text(requirement.description, f"{path}.description", DESCRIPTION_MAX_LENGTH):
        found.append(violation)
    if not isinstance(requirement.kind, RequirementKind):
        found.append(FieldViolation(f"{path}.kind", "must be DECLARATION, DOCUMENT or ATTRIBUTE_CHECK"))
    found.extend(_attribute_violations(requirement, path))
    max_age_days = requirement.max_age_days or DEFAULT_MAX_AGE_DAYS
    valid_days = requirement.valid_days or DEFAULT_VALID_DAYS
    if requirement.kind == RequirementKind.DOCUMENT:
        for value, name in ((max_age_days, "max_age_days"), (valid_days, "valid_days")):
            if not 1 <= value <= MAX_MAX_AGE_DAYS:
                found.append(
                    FieldViolation(f"{path}.{name}", f"must be between 1 and {MAX_MAX_AGE_DAYS} days")
                )
    if not isinstance(requirement.decided_by, Decider):
        found.append(FieldViolation(f"{path}.decided_by", "must be AUTOMATIC or PERSON"))
    if requirement.legal_basis and (
        violation := check_text(requirement.legal_basis, f"{path}.legal_basis", LEGAL_BASIS_MAX_LENGTH)
    ):
        found.append(violation)
    return found


def _attribute_violations(requirement: Requirement, path: str) -> list[FieldViolation]:
    """An attribute check names its attribute and what it is checked against; other kinds name neither."""
    if requirement.kind != RequirementKind.ATTRIBUTE_CHECK:
        return [
            FieldViolation(f"{path}.{name}", "is only for attribute checks")
            for name, given in (
                ("attribute", requirement.attribute != Attribute.UNSPECIFIED),
                ("values", bool(requirement.values)),
                ("price_ceiling", requirement.price_ceiling is not None),
            )
            if given
        ]
    attribute = requirement.attribute
    if attribute == Attribute.UNSPECIFIED or not isinstance(attribute, Attribute):
        return [FieldViolation(f"{path}.attribute", "an attribute check must name its attribute")]
    found: list[FieldViolation] = []
    if attribute == Attribute.PRICE_CEILING:
        if (
            requirement.price_ceiling is None
            or not Decimal(0) <= requirement.price_ceiling < Decimal(10) ** 9
        ):
            found.append(
                FieldViolation(f"{path}.price_ceiling", "must be between 0 and 999 999 999.99 euros")
            )
        if requirement.values:
            found.append(FieldViolation(f"{path}.values", "a price-ceiling check takes no values"))
        return found
    if requirement.price_ceiling is not None:
        found.append(FieldViolation(f"{path}.price_ceiling", "is only for a price-ceiling check"))
    if not requirement.values:
        found.append(FieldViolation(f"{path}.values", "must name at least one value to check against"))
    if attribute == Attribute.LANGUAGES:
        found.extend(validate_areas((), requirement.values, path, languages_field="values"))
    elif attribute == Attribute.SERVICE_AREA:
        found.extend(validate_areas(requirement.values, (), path, municipalities_field="values"))
    else:
        found.extend(validate_qualifications(requirement.values, f"{path}.values"))
    return found


@dataclass(frozen=True)
class Evidence:
    """A provider's evidence for one requirement: a declaration or a document's issue date."""

    requirement_code: str
    declared: bool = False
    issued_on: date | None = None
    document_sha256: str = ""


class ReasonCode(StrEnum):
    """Why a registration was refused or suspended."""

    REQUIREMENT_NOT_DECLARED = "REQUIREMENT_NOT_DECLARED"
    EVIDENCE_MISSING = "EVIDENCE_MISSING"
    EVIDENCE_TOO_OLD = "EVIDENCE_TOO_OLD"
    EVIDENCE_FROM_FUTURE = "EVIDENCE_FROM_FUTURE"
    QUALITY_BREACH = "QUALITY_BREACH"
    TERMS_NOT_RECOMMITTED = "TERMS_NOT_RECOMMITTED"
    EVIDENCE_EXPIRED = "EVIDENCE_EXPIRED"
    SUSPENSION_LIFTED = "SUSPENSION_LIFTED"
    MARKET_FAILURE_LIFTED = "MARKET_FAILURE_LIFTED"
    LANGUAGE_NOT_OFFERED = "LANGUAGE_NOT_OFFERED"
    OUTSIDE_SERVICE_AREA = "OUTSIDE_SERVICE_AREA"
    PRICE_MISSING = "PRICE_MISSING"
    PRICE_ABOVE_CEILING = "PRICE_ABOVE_CEILING"
    QUALIFICATION_NOT_DECLARED = "QUALIFICATION_NOT_DECLARED"
    BREACH_RESOLVED = "BREACH_RESOLVED"
    EVIDENCE_RENEWED = "EVIDENCE_RENEWED"


@dataclass(frozen=True)
class Reason:
    """A reason for a refusal or suspension; both are appealable decisions and must say why."""

    code: str
    """One of ReasonCode."""
    subject: str
    """The requirement code or the breach the reason refers to."""
    message: str


def verify_commitment(public_key: bytes, signature: bytes, content_hash: str) -> None:
    """Check the provider's Ed25519 signature over the raw bytes of the terms' content hash.

    A signature over other terms (or none at all) is malformed input, not a reason
    to refuse: the provider has not committed to these terms, so there is nothing
    to decide.
    """
    key = ed25519_public_key(public_key)
    if key is None:
        description = "must be a raw 32-byte Ed25519 public key"
        raise InvalidArgument(description, [FieldViolation("registration.public_key", description)]) from None
    try:
        key.verify(signature, bytes.fromhex(content_hash))
    except InvalidSignature:
        description = "does not verify against the terms' content hash"
        raise InvalidArgument(
            description, [FieldViolation("registration.terms_signature", description)]
        ) from None


def assess_evidence(terms: Terms, evidence: Sequence[Evidence], today: date) -> list[Reason]:
    """The reasons the evidence falls short of the terms, in requirement order; empty when all are met.

    Evidence for a code the terms do not have, or twice for one code, is malformed
    input and raises InvalidArgument rather than becoming a reason.
    """
    by_code: dict[str, Evidence] = {}
    violations: list[FieldViolation] = []
    if len(evidence) > MAX_REQUIREMENTS:
        violations.append(
            FieldViolation("registration.evidence", f"must hold at most {MAX_REQUIREMENTS} items")
        )
        evidence = evidence[:MAX_REQUIREMENTS]
    for index, item in enumerate(evidence):
        path = f"registration.evidence[{index}]"
        if terms.requirement(item.requirement_code) is None:
            violations.append(
                FieldViolation(
                    f"{path}.requirement_code", f"the terms have no requirement {item.requirement_code!r}"
                )
            )
        elif item.requirement_code in by_code:
            violations.append(
                FieldViolation(
                    f"{path}.requirement_code", f"evidence for {item.requirement_code!r} given twice"
                )
            )
        else:
            by_code[item.requirement_code] = item
        if item.document_sha256 and _SHA256_HEX.fullmatch(item.document_sha256) is None:
            violations.append(FieldViolation(f"{path}.document_sha256", "must be 64 hexadecimal digits"))
    raise_if_any(violations, "the evidence is invalid")

    reasons: list[Reason] = []
    for requirement in terms.all_requirements:
        reason = _shortfall(requirement, by_code.get(requirement.code), today)
        if reason is not None:
            reasons.append(reason)
    return reasons


def refuse_future_evidence(
    terms: Terms, evidence: Sequence[Evidence], today: date, field: str = "registration.evidence"
) -> None:
    """A document dated after today in Finland is the client's mistake, not a shortfall to decide:
    INVALID_ARGUMENT (EVIDENCE_FROM_FUTURE) naming each such document's issued_on, and nothing is
    stored, so a corrected submission is not blocked by a stored rejection."""
    violations = [
        FieldViolation(f"{field}[{index}].issued_on", _FUTURE)
        for index, item in enumerate(evidence)
        if _from_future(terms, item, today)
    ]
    _raise_from_future(violations)


_FUTURE = "must not be after today in Finland"


def _from_future(terms: Terms, item: Evidence, today: date) -> bool:
    requirement = terms.requirement(item.requirement_code)
    return (
        requirement is not None
        and requirement.kind == RequirementKind.DOCUMENT
        and item.issued_on is not None
        and item.issued_on > today
    )


def _raise_from_future(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(
            "evidence dated after today is refused: " + "; ".join(v.field for v in violations),
            violations,
            reason=ReasonCode.EVIDENCE_FROM_FUTURE,
        )


def refuse_aged_evidence(
    terms: Terms, evidence: Sequence[Evidence], today: date, field: str = "registration.evidence"
) -> None:
    """Evidence past its requirement's maximum age is refused, not decided: a submission with a
    document older than the terms allow is FAILED_PRECONDITION (EVIDENCE_TOO_OLD) naming each
    such document's issued_on, its requirement and the age allowed, and nothing is stored."""
    violations = [
        FieldViolation(f"{field}[{index}].issued_on", description)
        for index, item in enumerate(evidence)
        if (description := _too_old(terms, item, today)) is not None
    ]
    _raise_too_old(violations)


def _too_old(terms: Terms, item: Evidence, today: date) -> str | None:
    """Why a document is past its requirement's maximum age, or None when it is not (or is no
    dated document of these terms)."""
    requirement = terms.requirement(item.requirement_code)
    if requirement is None or requirement.kind != RequirementKind.DOCUMENT or item.issued_on is None:
        return None
    age_days = (today - item.issued_on).days
    if age_days <= requirement.max_age_days:
        return None
    return (
        f"is {age_days} days old; requirement {requirement.code!r} allows "
        f"at most {requirement.max_age_days} days"
    )


def _raise_too_old(violations: list[FieldViolation]) -> None:
    if violations:
        raise FailedPrecondition(
            "evidence past its age is refused: "
            + "; ".join(f"{v.field} {v.description}" for v in violations),
            violations,
            reason=ReasonCode.EVIDENCE_TOO_OLD,
        )


def assess_attributes(
    terms: Terms,
    municipalities: Sequence[str],
    languages: Sequence[str],
    price: Decimal | None,
    qualifications: Sequence[str],
) -> list[Reason]:
    """The reasons the registration's attributes fall short of the terms' automatic attribute
    checks, one per unmet requirement in requirement order; empty when all hold. Checks a person
    decides are left to that person (the registration goes to review)."""
    reasons: list[Reason] = []
    for requirement in terms.all_requirements:
        if requirement.kind != RequirementKind.ATTRIBUTE_CHECK or requirement.decided_by != Decider.AUTOMATIC:
            continue
        reason = _attribute_shortfall(requirement, municipalities, languages, price, qualifications)
        if reason is not None:
            reasons.append(reason)
    return reasons


def _attribute_shortfall(
    requirement: Requirement,
    municipalities: Sequence[str],
    languages: Sequence[str],
    price: Decimal | None,
    qualifications: Sequence[str],
) -> Reason | None:
    code = requirement.code
    match requirement.attribute:
        case Attribute.LANGUAGES:
            if missing := [v for v in requirement.values if v not in languages]:
                return Reason(
                    ReasonCode.LANGUAGE_NOT_OFFERED,
                    code,
                    f"The service must be offered in {', '.join(missing)} ({code!r}).",
                )
        case Attribute.SERVICE_AREA:
            outside = [m for m in municipalities if m not in requirement.values]
            if outside or not municipalities:
                where = ", ".join(outside) if outside else "no municipality"
                return Reason(
                    ReasonCode.OUTSIDE_SERVICE_AREA,
                    code,
                    f"The service area must lie within the terms' area ({code!r}); it names {where}.",
                )
        case Attribute.PRICE_CEILING:
            if price is None:
                return Reason(ReasonCode.PRICE_MISSING, code, f"A price must be given ({code!r}).")
            if requirement.price_ceiling is not None and price > requirement.price_ceiling:
                return Reason(
                    ReasonCode.PRICE_ABOVE_CEILING,
                    code,
                    f"The price {price} € is above the ceiling of {requirement.price_ceiling} € ({code!r}).",
                )
        case Attribute.STAFF_QUALIFICATION:
            if missing := [v for v in requirement.values if v not in qualifications]:
                return Reason(
                    ReasonCode.QUALIFICATION_NOT_DECLARED,
                    code,
                    f"Staff qualifications {', '.join(missing)} are not declared ({code!r}).",
                )
    return None


def _shortfall(requirement: Requirement, evidence: Evidence | None, today: date) -> Reason | None:
    code = requirement.code
    if requirement.kind == RequirementKind.ATTRIBUTE_CHECK:
        return None  # read from the registration itself: assess_attributes
    if requirement.kind == RequirementKind.DECLARATION:
        if evidence is None or not evidence.declared:
            return Reason(
                ReasonCode.REQUIREMENT_NOT_DECLARED, code, f"The provider has not declared {code!r}."
            )
        return None
    if evidence is None or evidence.issued_on is None:
        return Reason(ReasonCode.EVIDENCE_MISSING, code, f"No document was submitted for {code!r}.")
    if evidence.issued_on > today:
        return Reason(
            ReasonCode.EVIDENCE_FROM_FUTURE,
            code,
            f"The document for {code!r} is dated {evidence.issued_on.isoformat()}, after today.",
        )
    age_days = (today - evidence.issued_on).days
    if age_days > requirement.max_age_days:
        return Reason(
            ReasonCode.EVIDENCE_TOO_OLD,
            code,
            f"The document for {code!r} is {age_days} days old; "
            f"at most {requirement.max_age_days} days are allowed.",
        )
    return None


class RegistrationState(StrEnum):
    """Where a registration stands. A draft is stored until the provider submits it; submitted is
    not: the registry decides on submission, in the same unit of work, so a submitted
    registration is already in review, admitted or rejected."""

    DRAFT = "DRAFT"

    ADMITTED = "ADMITTED"
    REJECTED = "REJECTED"
    SUSPENDED = "SUSPENDED"
    IN_REVIEW = "IN_REVIEW"
    LAPSED = "LAPSED"
    REVOKED = "REVOKED"
    WITHDRAWN = "WITHDRAWN"


ACTIVE_STATES = frozenset(
    {RegistrationState.IN_REVIEW, RegistrationState.ADMITTED, RegistrationState.SUSPENDED}
)
"""The states that hold the provider's one registration per organiser and service."""


class DecisionKind(StrEnum):
    """What a decision on a registration did."""

    DRAFT = "DRAFT"
    """The provider kept the registration as a draft: the record of who started it, when."""
    ADMISSION = "ADMISSION"
    REJECTION = "REJECTION"
    REVIEW = "REVIEW"
    SUSPENSION = "SUSPENSION"
    REINSTATEMENT = "REINSTATEMENT"
    REVOCATION = "REVOCATION"
    LAPSE = "LAPSE"
    WITHDRAWAL = "WITHDRAWAL"
    RECOMMITMENT = "RECOMMITMENT"
    EVIDENCE_RENEWAL = "EVIDENCE_RENEWAL"
    """The provider renewed a document before it expired: the admission stands on the new one."""


@dataclass(frozen=True)
class Decision:
    """One decision on a registration: the record a rectification request (oikaisuvaatimus) is
    made against. Says what was decided, why, on which terms version, caused by what, by whom, when."""

    kind: DecisionKind
    state: RegistrationState
    """The state the decision led to."""
    reasons: tuple[Reason, ...]
    causes: tuple[str, ...]
    """What caused it: breaches, timers, events, by name."""
    actor: str
    """Who decided, as the audit trail names it ("system:..." for events and timers)."""
    decide_time: datetime
    terms_version: int
    lift_time: datetime | None = None
    """For suspensions: when the suspension lifts itself, if it does."""


_MUNICIPALITY = re.compile(r"[0-9]{3}")
_LANGUAGE = re.compile(r"[a-z]{2}")
_QUALIFICATION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_MUNICIPALITY_DESCRIPTION = "a three-digit municipality code, e.g. 837"
_LANGUAGE_DESCRIPTION = "an ISO 639-1 language code, e.g. fi"


def _load_municipalities() -> dict[str, tuple[str, str]]:
    """The code list, derived from Posti's postal code file (see the file's header comment)."""
    path = Path(__file__).with_name("data") / "municipalities.csv"
    with path.open(encoding="utf-8", newline="") as file:
        rows = csv.DictReader(line for line in file if not line.startswith("#"))
        return {row["code"]: (row["name_fi"], row["name_sv"]) for row in rows}


MUNICIPALITIES: dict[str, tuple[str, str]] = _load_municipalities()
"""Finland's municipalities by official three-digit code (kuntanumero): (Finnish name, Swedish name)."""


def _municipality_violation(value: str, field: str) -> FieldViolation | None:
    if _MUNICIPALITY.fullmatch(value) is None:
        return FieldViolation(field, f"must be {_MUNICIPALITY_DESCRIPTION}")
    if value not in MUNICIPALITIES:
        return FieldViolation(field, f"{value!r} is not the code of a Finnish municipality")
    return None


def _language_violation(value: str, field: str) -> FieldViolation | None:
    if _LANGUAGE.fullmatch(value) is None:
        return FieldViolation(field, f"must be {_LANGUAGE_DESCRIPTION}")
    return None


def validate_areas(
    municipalities: Sequence[str],
    languages: Sequence[str],
    prefix: str,
    *,
    municipalities_field: str = "municipalities",
    languages_field: str = "languages",
) -> list[FieldViolation]:
    """Municipalities as official three-digit codes of existing municipalities and languages as
    ISO 639-1 codes, no repeats."""
    violations: list[FieldViolation] = []
    for values, name, check in (
        (municipalities, municipalities_field, _municipality_violation),
        (languages, languages_field, _language_violation),
    ):
        if len(values) > MAX_AREAS:
            violations.append(FieldViolation(f"{prefix}.{name}", f"must hold at most {MAX_AREAS} items"))
            continue
        seen: set[str] = set()
        for index, value in enumerate(values):
            if (violation := check(value, f"{prefix}.{name}[{index}]")) is not None:
                violations.append(violation)
            elif value in seen:
                violations.append(FieldViolation(f"{prefix}.{name}[{index}]", f"repeats {value!r}"))
            seen.add(value)
    return violations


def validate_qualifications(qualifications: Sequence[str], field: str) -> list[FieldViolation]:
    """Qualification codes: lowercase letters, digits and hyphens, no repeats."""
    if len(qualifications) > MAX_REQUIREMENTS:
        return [FieldViolation(field, f"must hold at most {MAX_REQUIREMENTS} items")]
    violations: list[FieldViolation] = []
    for index, value in enumerate(qualifications):
        if _QUALIFICATION.fullmatch(value) is None:
            violations.append(
                FieldViolation(f"{field}[{index}]", "must be a code of lowercase letters, digits and hyphens")
            )
        elif value in qualifications[:index]:
            violations.append(FieldViolation(f"{field}[{index}]", f"repeats {value!r}"))
    return violations


def validate_list_filter(municipality: str, language: str) -> None:
    """The public list's filters: a municipality code and a language code, each optional."""
    violations = [
        violation
        for value, name, check in (
            (municipality, "municipality", _municipality_violation),
            (language, "language", _language_violation),
        )
        if value and (violation := check(value, name)) is not None
    ]
    raise_if_any(violations, "the filter is invalid")


def validate_reasons(reasons: Sequence[Reason], field: str) -> None:
    """A person's decision must give at least one reason, each with a code and a message."""
    violations: list[FieldViolation] = []
    if not reasons:
        violations.append(FieldViolation(field, "a decision needs at least one reason"))
    if len(reasons) > MAX_REASONS:
        violations.append(FieldViolation(field, f"must give at most {MAX_REASONS} reasons"))
        reasons = reasons[:MAX_REASONS]
    for index, reason in enumerate(reasons):
        if violation := check_text(reason.code, f"{field}[{index}].code", CODE_MAX_LENGTH):
            violations.append(violation)
        if violation := check_text(reason.message, f"{field}[{index}].message", DESCRIPTION_MAX_LENGTH):
            violations.append(violation)
        if reason.subject and (violation := check_text(reason.subject, f"{field}[{index}].subject", 255)):
            violations.append(violation)
    raise_if_any(violations, "the decision is invalid")


def evidence_expiry(terms: Terms, evidence: Sequence[Evidence]) -> tuple[str, datetime] | None:
    """The document that expires first and the instant it does (the start of the Finnish day after
    its last valid day), or None when no document backs the admission."""
    expiries: list[tuple[datetime, str]] = []
    for item in evidence:
        requirement = terms.requirement(item.requirement_code)
        if requirement is None or requirement.kind != RequirementKind.DOCUMENT or item.issued_on is None:
            continue
        expiries.append((_expires(requirement, item.issued_on), item.requirement_code))
    if not expiries:
        return None
    moment, code = min(expiries)
    return code, moment


def _expires(requirement: Requirement, issued_on: date) -> datetime:
    """When a document issued on `issued_on` stops standing: the start of the Finnish day after
    its last valid day."""
    return datetime.combine(issued_on + timedelta(days=requirement.valid_days), time(0), tzinfo=FINLAND)


class LegalForm(StrEnum):
    """The provider's legal form; a municipality or its in-house entity may register only under
    a market-failure finding (markkinapuute)."""

    UNSPECIFIED = "UNSPECIFIED"
    COMPANY = "COMPANY"
    COOPERATIVE = "COOPERATIVE"
    ASSOCIATION = "ASSOCIATION"
    FOUNDATION = "FOUNDATION"
    SOLE_TRADER = "SOLE_TRADER"
    MUNICIPALITY = "MUNICIPALITY"
    MUNICIPAL_IN_HOUSE = "MUNICIPAL_IN_HOUSE"

    @property
    def municipal(self) -> bool:
        return self in {LegalForm.MUNICIPALITY, LegalForm.MUNICIPAL_IN_HOUSE}


@dataclass(frozen=True)
class MarketFailure:
    """A region's finding that a service lacks providers in some municipalities: only while it
    is valid may a municipality or its in-house entity produce that service there."""

    finding: str
    region: str
    service: str
    municipalities: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime | None = None
    lifted_at: datetime | None = None

    def covers(self, municipality: str, now: datetime) -> bool:
        return (
            self.lifted_at is None
            and self.valid_from <= now
            and (self.valid_until is None or now < self.valid_until)
            and municipality in self.municipalities
        )


def uncovered(municipalities: Sequence[str], findings: Sequence[MarketFailure], now: datetime) -> list[str]:
    """The municipalities no valid finding covers."""
    return [m for m in municipalities if not any(f.covers(m, now) for f in findings)]


def require_market_failure(
    legal_form: LegalForm, municipalities: Sequence[str], findings: Sequence[MarketFailure], now: datetime
) -> None:
    """A municipal provider must name its area, and a valid finding must cover all of it."""
    if not legal_form.municipal:
        return
    if not municipalities:
        description = "a municipality or its in-house entity must name the municipalities it would serve"
        raise InvalidArgument(description, [FieldViolation("registration.municipalities", description)])
    missing = uncovered(municipalities, findings, now)
    if missing:
        raise FailedPrecondition(
            "a municipality or its in-house entity may register only under a valid market-failure finding; "
            f"none covers {', '.join(missing)} for this service",
            reason="NO_MARKET_FAILURE",
        )


MAX_REGISTRATION_KEYS = 10
"""Live keys a registration may hold: one per signer a provider has, few enough to try each."""


@dataclass(frozen=True)
class RegistrationKey:
    """One Ed25519 key a provider signs for its registration with; retired keys stay for the record."""

    public_key: bytes
    add_time: datetime
    retire_time: datetime | None = None

    @property
    def fingerprint(self) -> str:
        """The key's SHA-256 in hex: what events and audit records name instead of the key."""
        return key_fingerprint(self.public_key)

    @property
    def live(self) -> bool:
        return self.retire_time is None


@dataclass
class Registration(Aggregate):
    """A provider's registration (ilmoittautuminen) against one terms version, and the decisions on it."""

    id: str
    region: str
    service: str
    terms_version: int
    business_id: str
    display_name: str
    state: RegistrationState
    reasons: list[Reason]
    created_at: datetime
    updated_at: datetime
    suspended_by_breach: str = ""
    public_key: bytes = b""
    """The newest live key: the one the provider registered with until it adds another."""
    evidence: tuple[Evidence, ...] = ()
    municipalities: tuple[str, ...] = ()
    """Where the provider serves: official municipality codes. Widening it needs a new registration."""
    languages: tuple[str, ...] = ()
    price: Decimal | None = None
    """The provider's price for the service, in euros, as shown on the public list."""
    legal_form: LegalForm = LegalForm.UNSPECIFIED
    decisions: list[Decision] = field(default_factory=list)
    recommit_deadline: datetime | None = None
    """Set while a newer terms version waits for this provider's commitment."""
    lift_time: datetime | None = None
    """Set while a timed suspension stands."""
    qualifications: tuple[str, ...] = ()
    """Staff qualifications the provider declares, for the terms' staff-qualification checks."""
    key_history: tuple[RegistrationKey, ...] = ()
    """Every key added, retired ones too; empty means the one key it was created with."""

    @property
    def name(self) -> str:
        return REGISTRATION.format(region=self.region, service=self.service, registration=self.id)

    @property
    def keys(self) -> tuple[RegistrationKey, ...]:
        """Every key the registration has held, oldest first; a registration that never changed its
        keys holds the one it was created (or last drafted) with."""
        if self.key_history or not self.public_key:
            return self.key_history
        return (RegistrationKey(self.public_key, self.created_at),)

    @property
    def live_keys(self) -> tuple[bytes, ...]:
        """The raw keys any signature for this registration may verify with, oldest first."""
        return tuple(k.public_key for k in self.keys if k.live)

    @property
    def terms_name(self) -> str:
        return TERMS.format(region=self.region, service=self.service, version=self.terms_version)

    @property
    def active(self) -> bool:
        """In review, admitted or suspended: what allows one registration per provider, region and service."""
        return self.state in ACTIVE_STATES

    @property
    def listed(self) -> bool:
        """Whether customers may choose this provider: admitted and not suspended."""
        return self.state == RegistrationState.ADMITTED

    def _common(self) -> tuple[str, str, str, str, str]:
        return (self.name, self.terms_name, self.region, self.service, self.business_id)

    def _decide(
        self,
        kind: DecisionKind,
        state: RegistrationState,
        reasons: Sequence[Reason],
        *,
        actor: str,
        now: datetime,
        causes: Sequence[str] = (),
        lift_time: datetime | None = None,
    ) -> None:
        self.state = state
        self.reasons = list(reasons)
        self._record_decision(kind, reasons, actor=actor, now=now, causes=causes, lift_time=lift_time)

    def _record_decision(
        self,
        kind: DecisionKind,
        reasons: Sequence[Reason],
        *,
        actor: str,
        now: datetime,
        causes: Sequence[str] = (),
        lift_time: datetime | None = None,
    ) -> None:
        """A decision on the record that leaves the state and its reasons as they are (an
        evidence renewal); `_decide` is this after moving the state."""
        require_aware(now)
        self.updated_at = now
        self.decisions.append(
            Decision(
                kind, self.state, tuple(reasons), tuple(causes), actor, now, self.terms_version, lift_time
            )
        )

    def _require(self, allowed: frozenset[RegistrationState], action: str, reason: str) -> None:
        if self.state not in allowed:
            raise FailedPrecondition(
                f"registration {self.name} is {self.state.value.lower()} and cannot be {action}",
                reason=reason,
            )

    def decide_review(self, admit: bool, reasons: Sequence[Reason], actor: str, now: datetime) -> None:
        """A person's decision on a registration in review: admit (reasons optional, checked
        like a rejection's when given: they go into the decision record), or reject with reasons."""
        self._require(frozenset({RegistrationState.IN_REVIEW}), "decided", "NOT_IN_REVIEW")
        if admit:
            if reasons:
                validate_reasons(reasons, "reasons")
            self._admit(actor, now, reasons)
        else:
            validate_reasons(reasons, "reasons")
            self._reject(reasons, actor, now)

    def _reject(self, reasons: Sequence[Reason], actor: str, now: datetime) -> None:
        self._decide(DecisionKind.REJECTION, RegistrationState.REJECTED, reasons, actor=actor, now=now)
        self.record(
            RegistrationRejected(
                *self._common(), tuple(r.code for r in reasons), now, tuple(r.subject for r in reasons)
            )
        )

    def _submitted(self, terms: Terms, reasons: Sequence[Reason], actor: str, now: datetime) -> None:
        """Record the submission (ProviderRegistered) and decide it at once: rejected with
        `reasons` when there are any, else in review when a person decides part of the terms,
        else admitted."""
        self.record(ProviderRegistered(*self._common(), now))
        if reasons:
            self._reject(reasons, actor, now)
        elif terms.needs_a_person:
            self._decide(DecisionKind.REVIEW, RegistrationState.IN_REVIEW, (), actor=actor, now=now)
            self.record(RegistrationInReview(*self._common(), now))
        else:
            self._admit(actor, now)

    def update_draft(self, changes: DraftChanges, terms: Terms, now: datetime) -> None:
        """The provider changes its draft: `changes.fields` replace the stored ones, validated as on
        submission; `terms` is the draft's terms version (or the new one when terms change)."""
        _update_draft(self, changes, terms, now)

    def submit(self, terms: Terms, signature: bytes, actor: str, now: datetime) -> None:
        """The provider submits its draft, signing `terms` (the draft's version, current): the
        registration is then validated in full and decided as a one-call registration is."""
        self._require(frozenset({RegistrationState.DRAFT}), "submitted", "NOT_DRAFT")
        if (terms.region, terms.service, terms.version) != (self.region, self.service, self.terms_version):
            raise ValueError(f"{terms.name} is not the terms of {self.name}")
        violations, reasons = _registration_violations(
            terms,
            self.display_name,
            self.evidence,
            self.municipalities,
            self.languages,
            self.price,
            self.qualifications,
            now,
            commitment=(self.public_key, signature, "terms_signature"),
        )
        raise_if_any(violations, "the draft cannot be submitted")
        refuse_future_evidence(terms, self.evidence, finnish_date(now))
        refuse_aged_evidence(terms, self.evidence, finnish_date(now))
        self._submitted(terms, reasons, actor, now)

    def _admit(self, actor: str, now: datetime, reasons: Sequence[Reason] = ()) -> None:
        self._decide(DecisionKind.ADMISSION, RegistrationState.ADMITTED, reasons, actor=actor, now=now)
        self.record(RegistrationAdmitted(*self._common(), now, self.municipalities, self.languages))

    def suspend(
        self,
        breach: str,
        now: datetime,
        *,
        reasons: Sequence[Reason] = (),
        actor: str = "system",
        lift_time: datetime | None = None,
        causes: Sequence[str] = (),
    ) -> bool:
        """Suspend an admitted provider, after a quality breach or by a supervisor's decision with
        reasons; False when it was suspended already (a redelivered breach changes nothing).

        A timed suspension names its lift time, which must be in the future.
        """
        require_aware(now)
        if not breach and not reasons:
            raise ValueError("a suspension must name the breach or the reasons behind it")
        if lift_time is not None and lift_time <= now:
            description = "must be in the future"
            raise InvalidArgument(f"lift_time {description}", [FieldViolation("lift_time", description)])
        if self.state == RegistrationState.SUSPENDED:
            return False
        self._require(frozenset({RegistrationState.ADMITTED}), "suspended", "NOT_ADMITTED")
        if breach:
            reasons = [
                Reason(
                    ReasonCode.QUALITY_BREACH,
                    breach,
                    f"Suspended in this region after quality breach {breach}.",
                ),
                *reasons,
            ]
        self._decide(
            DecisionKind.SUSPENSION,
            RegistrationState.SUSPENDED,
            reasons,
            actor=actor,
            now=now,
            causes=[*([breach] if breach else []), *causes],
            lift_time=lift_time,
        )
        self.suspended_by_breach = breach
        self.lift_time = lift_time
        self.record(
            ProviderSuspended(
                self.name,
                self.region,
                self.service,
                self.business_id,
                breach,
                now,
                self.terms_name,
                tuple(r.code for r in reasons),
                lift_time,
            )
        )
        return True

    def reinstate(
        self, reasons: Sequence[Reason], actor: str, now: datetime, causes: Sequence[str] = ()
    ) -> None:
        """End a suspension: a person's decision with reasons, or the suspension's timed lift."""
        self._require(frozenset({RegistrationState.SUSPENDED}), "reinstated", "NOT_SUSPENDED")
        validate_reasons(reasons, "reasons")
        self._decide(
            DecisionKind.REINSTATEMENT,
            RegistrationState.ADMITTED,
            reasons,
            actor=actor,
            now=now,
            causes=causes,
        )
        self.suspended_by_breach = ""
        self.lift_time = None
        self.record(ProviderReinstated(*self._common(), tuple(r.code for r in reasons), now))

    def resolve_breach(self, breach: str, actor: str, now: datetime, causes: Sequence[str] = ()) -> bool:
        """Reinstate after the breach that suspended this registration was resolved (the region's
        breach policy decides whether a resolution reinstates); False when this breach is not
        what holds the registration suspended, so a redelivered or unrelated resolution changes
        nothing. The decision cites the breach and `causes` (the resolution event)."""
        if self.state != RegistrationState.SUSPENDED or not breach or self.suspended_by_breach != breach:
            return False
        reason = Reason(
            ReasonCode.BREACH_RESOLVED,
            breach,
            f"Quality breach {breach}, which suspended this provider, was resolved.",
        )
        self.reinstate([reason], actor, now, causes=[breach, *causes])
        return True

    def revoke(self, reasons: Sequence[Reason], actor: str, now: datetime) -> None:
        """Remove an admitted or suspended provider for good, with reasons."""
        self._require(
            frozenset({RegistrationState.ADMITTED, RegistrationState.SUSPENDED}), "revoked", "NOT_ADMITTED"
        )
        validate_reasons(reasons, "reasons")
        self._decide(DecisionKind.REVOCATION, RegistrationState.REVOKED, reasons, actor=actor, now=now)
        self.lift_time = None
        self.recommit_deadline = None
        self.record(ProviderRevoked(*self._common(), tuple(r.code for r in reasons), now))

    def withdraw(self, actor: str, now: datetime, reasons: Sequence[Reason] = ()) -> None:
        """The provider withdraws a draft, or a registration that is in review, admitted or
        suspended. Reasons are optional and checked, when given, as a person's decision's are:
        they go into the decision record; the event carries their codes only."""
        self._require(ACTIVE_STATES | {RegistrationState.DRAFT}, "withdrawn", "NOT_ACTIVE")
        if reasons:
            validate_reasons(reasons, "reasons")
        self._decide(DecisionKind.WITHDRAWAL, RegistrationState.WITHDRAWN, reasons, actor=actor, now=now)
        self.lift_time = None
        self.recommit_deadline = None
        self.record(RegistrationWithdrawn(*self._common(), now, tuple(r.code for r in reasons)))

    def lapse(self, reason: Reason, actor: str, now: datetime, causes: Sequence[str] = ()) -> bool:
        """End an admission by itself (terms not re-committed, evidence expired, market failure
        lifted); False when the registration is no longer admitted or suspended, so a late timer
        changes nothing. `actor` names what lapsed it, e.g. "system:timer:<timer key>"."""
        if self.state not in {RegistrationState.ADMITTED, RegistrationState.SUSPENDED}:
            return False
        self._decide(
            DecisionKind.LAPSE, RegistrationState.LAPSED, [reason], actor=actor, now=now, causes=causes
        )
        self.lift_time = None
        self.recommit_deadline = None
        self.record(RegistrationLapsed(*self._common(), (reason.code,), now))
        return True

    def await_recommitment(self, deadline: datetime) -> bool:
        """A newer terms version was published: the provider must re-commit by `deadline`.
        False when the registration holds nothing to re-commit (not admitted or suspended)."""
        if self.state not in {RegistrationState.ADMITTED, RegistrationState.SUSPENDED}:
            return False
        self.recommit_deadline = deadline
        return True

    def recommit(
        self,
        terms: Terms,
        evidence: Sequence[Evidence],
        signature: bytes,
        actor: str,
        now: datetime,
    ) -> None:
        """Commit to a newer terms version with the key registered before; the evidence (the
        registration's own when none is given) must meet the new terms."""
        self._require(
            frozenset({RegistrationState.ADMITTED, RegistrationState.SUSPENDED}),
            "re-committed",
            "NOT_ADMITTED",
        )
        if terms.version <= self.terms_version:
            raise FailedPrecondition(
                f"{self.name} is already committed to {self.terms_name}", reason="ALREADY_COMMITTED"
            )
        violations: list[FieldViolation] = []
        if verify_with_any(self.live_keys, signature, bytes.fromhex(terms.content_hash)) is None:
            violations.append(
                FieldViolation("terms_signature", "does not verify with a live key over these terms")
            )
        evidence = tuple(evidence) or self.evidence
        shortfalls: list[Reason] = []
        try:
            shortfalls = assess_evidence(terms, evidence, finnish_date(now))
        except InvalidArgument as error:
            violations.extend(error.violations)
        shortfalls.extend(
            assess_attributes(terms, self.municipalities, self.languages, self.price, self.qualifications)
        )
        raise_if_any(violations, "the re-commitment is invalid")
        if shortfalls:
            raise FailedPrecondition(
                "the evidence does not meet the new terms: " + "; ".join(r.message for r in shortfalls),
                reason="EVIDENCE_SHORT",
            )
        self.terms_version = terms.version
        self.evidence = evidence
        self.recommit_deadline = None
        self._decide(DecisionKind.RECOMMITMENT, self.state, (), actor=actor, now=now)
        self.record(RegistrationRecommitted(*self._common(), now))

    def rotate_key(self, new_public_key: bytes, signature: bytes, now: datetime) -> None:
        """Replace a key with a new one in one decision: a live key signs the new key's 32 raw
        bytes, the new key is added and the key that signed is retired, so only the holder of a
        live key can hand the registration to another."""
        self._require(ACTIVE_STATES, "given a new key", "NOT_ACTIVE")
        violations: list[FieldViolation] = []
        if ed25519_public_key(new_public_key) is None:
            violations.append(FieldViolation("public_key", "must be a raw 32-byte Ed25519 public key"))
        signer = verify_with_any(self.live_keys, signature, new_public_key)
        if signer is None:
            violations.append(FieldViolation("key_signature", "does not verify with a live key"))
        raise_if_any(violations, "the key rotation is invalid")
        require_aware(now)
        kept = tuple(
            replace(k, retire_time=now) if k.public_key == signer and k.live else k
            for k in self.keys
            if k.public_key != new_public_key or not k.live
        )
        self._set_keys((*kept, RegistrationKey(new_public_key, now)), now)
        self.record(ProviderKeyRotated(*self._common(), now))

    def add_key(
        self, new_public_key: bytes, key_signature: bytes, possession_signature: bytes, now: datetime
    ) -> bool:
        """Add a live key: a live key signs the new key's 32 raw bytes (the holder agrees) and the
        new key signs the registration's name (its holder has it). False when it is live already."""
        self._require(ACTIVE_STATES, "given a key", "NOT_ACTIVE")
        require_aware(now)
        violations: list[FieldViolation] = []
        if verify_with_any((new_public_key,), possession_signature, self.name.encode()) is None:
            if ed25519_public_key(new_public_key) is None:
                violations.append(FieldViolation("public_key", "must be a raw 32-byte Ed25519 public key"))
            else:
                violations.append(
                    FieldViolation("possession_signature", "does not verify with the new key over the name")
                )
        if verify_with_any(self.live_keys, key_signature, new_public_key) is None:
            violations.append(FieldViolation("key_signature", "does not verify with a live key"))
        raise_if_any(violations, "the key is invalid")
        if new_public_key in self.live_keys:
            return False
        if len(self.live_keys) >= MAX_REGISTRATION_KEYS:
            raise FailedPrecondition(
                f"{self.name} holds {MAX_REGISTRATION_KEYS} live keys, the most allowed: retire one first",
                reason="TOO_MANY_KEYS",
            )
        added = RegistrationKey(new_public_key, now)
        self._set_keys((*self.keys, added), now)
        self.record(RegistrationKeyAdded(*self._common(), added.fingerprint, now))
        return True

    def retire_key(self, fingerprint: str, key_signature: bytes, now: datetime) -> None:
        """Retire a live key; another live key signs the retired key's 32 raw bytes. The last live
        key is never retired: the registration could then sign nothing."""
        self._require(ACTIVE_STATES, "relieved of a key", "NOT_ACTIVE")
        require_aware(now)
        target = next((k for k in self.keys if k.live and k.fingerprint == fingerprint), None)
        if target is None:
            description = "names no live key of the registration"
            raise InvalidArgument(description, [FieldViolation("key_fingerprint", description)])
        others = tuple(k for k in self.live_keys if k != target.public_key)
        if not others:
            raise FailedPrecondition(
                f"{self.name} has no other live key: add one before retiring this one",
                reason="LAST_LIVE_KEY",
            )
        if verify_with_any(others, key_signature, target.public_key) is None:
            description = "does not verify with another live key over the retired key"
            raise InvalidArgument(description, [FieldViolation("key_signature", description)])
        self._set_keys(tuple(replace(k, retire_time=now) if k is target else k for k in self.keys), now)
        self.record(RegistrationKeyRetired(*self._common(), fingerprint, now))

    def _set_keys(self, keys: tuple[RegistrationKey, ...], now: datetime) -> None:
        live = [k for k in keys if k.live]
        if not live:
            raise ValueError(f"{self.name} would be left without a live key")
        self.key_history = keys
        self.public_key = live[-1].public_key
        self.updated_at = now

    def renew_evidence(self, terms: Terms, renewed: Evidence, actor: str, now: datetime) -> datetime:
        """The provider renews the document behind one of the terms' document requirements
        before it expires: the new document must be newer than the one held and within the
        requirement's maximum age. Returns when the admission now expires (its earliest
        document's expiry), which the caller's timers follow."""
        _renew_evidence(self, terms, renewed, actor, now)
        expiry = evidence_expiry(terms, self.evidence)
        if expiry is None:  # unreachable: the renewed document itself expires
            raise ValueError(f"{self.name} has no document left to expire")
        return expiry[1]

    def remind_renewal(self, requirement_code: str, expires: datetime, now: datetime) -> bool:
        """Remind the provider that a document expires soon; False when there is nothing to renew."""
        if self.state not in {RegistrationState.ADMITTED, RegistrationState.SUSPENDED}:
            return False
        self.record(EvidenceRenewalDue(*self._common(), requirement_code, expires, now))
        return True


@dataclass(frozen=True)
class Listing:
    """One provider on the public list: public facts only."""

    business_id: str
    display_name: str
    registration: str
    terms: str
    admit_time: datetime
    municipalities: tuple[str, ...]
    languages: tuple[str, ...]
    price: Decimal | None


ORGANISER = ResourcePattern("regions/{region}")
PROVIDER = ResourcePattern("providers/{business_id:business_id}")
CONTACT_DETAILS = ResourcePattern("providers/{business_id:business_id}/contactDetails")


# -- a provider's contact details -----------------------------------------------------------------

CONTACT_FIELDS = ("contact_person", "email", "phone")
"""The fields of a provider's contact details, by their proto names; each is required."""
CONTACT_PERSON_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254
"""The most an address may hold in SMTP's forward path (RFC 5321, 4.5.3.1.3)."""
EMAIL_LOCAL_MAX_LENGTH = 64
PHONE_MAX_LENGTH = 32
"""What a number may take as typed, separators included; stored, it is at most 16 characters."""
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})"
)
_PHONE = re.compile(r"\+[1-9][0-9]{6,14}")
"""E.164: a plus, a country code and the subscriber's number, at most 15 digits in all."""
_PHONE_SEPARATORS = re.compile(r"[ -]")
_PHONE_DESCRIPTION = "must be + and 7-15 digits, the country code first, e.g. +358401234567"


@dataclass(frozen=True)
class ContactChanges:
    """New values for some of a provider's contact details: those named in `fields` (of CONTACT_FIELDS)."""

    fields: tuple[str, ...]
    """The fields to replace; empty: every one (a full replacement)."""
    contact_person: str = ""
    email: str = ""
    phone: str = ""


@dataclass
class ContactDetails(Aggregate):
    """Whom a region contacts at a provider: a person, an email address, a phone number.

    They belong to the provider, its business ID, and not to one registration: the provider is
    one legal person across organisers (DOMAIN.md, "Who is who"), and issue 7 lists contact
    details among what a provider is (business ID, legal form, keys), not among the parts of a
    registration (prices, area, languages). So a new contact person is one change for every
    region, needs no decision on any registration, and the admin of each region where the
    provider has registered reads the same details. They are personal data: read only by the
    provider and those admins, never on the public list, in events or in logs.
    """

    business_id: str
    contact_person: str = ""
    email: str = ""
    phone: str = ""
    """E.164, e.g. "+358401234567"."""
    update_time: datetime | None = None
    """None until the provider first gives them."""

    @property
    def name(self) -> str:
        return CONTACT_DETAILS.format(business_id=self.business_id)

    def update(self, changes: ContactChanges, now: datetime) -> bool:
        """Replace the fields `changes` names (none: all of them), each validated and
        normalised; every violation at once, nothing changed then. False when the result is what
        is held already: no change, so no event and no audit record."""
        require_aware(now)
        unknown = [name for name in changes.fields if name not in CONTACT_FIELDS]
        if unknown:
            description = f"only {', '.join(CONTACT_FIELDS)} of contact details may change"
            raise InvalidArgument(
                description, [FieldViolation("update_mask", f"{name}: {description}") for name in unknown]
            )
        replaced = changes.fields or CONTACT_FIELDS
        merged = {name: getattr(changes if name in replaced else self, name) for name in CONTACT_FIELDS}
        contact_person, email, phone = _contact_details(
            merged["contact_person"], merged["email"], merged["phone"]
        )
        if (contact_person, email, phone) == (self.contact_person, self.email, self.phone):
            return False
        self.contact_person, self.email, self.phone = contact_person, email, phone
        self.update_time = now
        self.record(ProviderContactDetailsChanged(self.name, self.business_id, now))
        return True


def _contact_details(contact_person: str, email: str, phone: str) -> tuple[str, str, str]:
    """The details normalised (trimmed; the email's domain in lower case; the number without
    separators), or InvalidArgument with every violation. The descriptions never repeat the
    value given: a refusal's text may be shown or kept where personal data must not be."""
    email, number = email.strip(), _PHONE_SEPARATORS.sub("", phone.strip())
    violations = [
        violation
        for violation in (
            check_text(contact_person, "contact_details.contact_person", CONTACT_PERSON_MAX_LENGTH),
            _email_violation(email, "contact_details.email"),
            _phone_violation(phone, number, "contact_details.phone"),
        )
        if violation is not None
    ]
    raise_if_any(violations, "the contact details are invalid")
    local, _, domain = email.rpartition("@")
    return contact_person.strip(), f"{local}@{domain.lower()}", number


def _email_violation(email: str, field: str) -> FieldViolation | None:
    """A violation unless `email` has the shape of an address (ASCII; an internationalised domain
    in its xn-- form), at most 254 characters with a local part of at most 64."""
    if not email:
        return FieldViolation(field, "must not be empty")
    if len(email) > EMAIL_MAX_LENGTH:
        return FieldViolation(field, f"must be at most {EMAIL_MAX_LENGTH} characters")
    if _EMAIL.fullmatch(email) is None or len(email.rpartition("@")[0]) > EMAIL_LOCAL_MAX_LENGTH:
        return FieldViolation(field, "must be an email address such as name@example.fi")
    return None


def _phone_violation(typed: str, number: str, field: str) -> FieldViolation | None:
    """A violation unless the number as `typed` fits PHONE_MAX_LENGTH and, its separators (spaces,
    hyphens) removed, is an international number: a plus, the country code and the number, 7 to
    15 digits in all."""
    if not number:
        return FieldViolation(field, "must not be empty")
    if len(typed) > PHONE_MAX_LENGTH:
        return FieldViolation(field, f"must be at most {PHONE_MAX_LENGTH} characters")
    if _PHONE.fullmatch(number) is None:
        return FieldViolation(field, _PHONE_DESCRIPTION)
    return None


class OrganiserKind(StrEnum):
    """Who organises growth services in an area."""

    REGION = "REGION"
    JOINT_MUNICIPAL_AUTHORITY = "JOINT_MUNICIPAL_AUTHORITY"


@dataclass(frozen=True)
class Organiser:
    """An organiser (järjestäjä) of growth services: a region, or a joint municipal authority;
    both are addressed as regions/{id}."""

    id: str
    display_name: str
    kind: OrganiserKind


@dataclass(frozen=True)
class CatalogueService:
    """A kind of growth service an organiser may publish terms for: national, or the organiser's own."""

    id: str
    display_name: str
    national: bool = False


SERVICE_NAME_MAX_LENGTH = 200


def new_service(id: str, display_name: str) -> CatalogueService:
    """A region's own service, validated; every violation at once."""
    violations: list[FieldViolation] = []
    try:
        validate_resource_id(id, "service_id")
    except InvalidArgument as error:
        violations.extend(error.violations)
    if violation := check_text(display_name, "service.display_name", SERVICE_NAME_MAX_LENGTH):
        violations.append(violation)
    raise_if_any(violations, "the service is invalid")
    return CatalogueService(id, display_name.strip())


BREACH_POLICY = ResourcePattern("regions/{region}/breachPolicy")
SEVERITIES = ("WARNING", "SERIOUS")
MAX_SUSPEND_DAYS = 3650


@dataclass(frozen=True)
class BreachPolicy:
    """A region's rule for what a quality breach from self-monitoring does to a provider's
    admission: which severities suspend, for which services, and for how long. Data, not code."""

    region: str
    suspending_severities: tuple[str, ...] = ("SERIOUS",)
    services: tuple[str, ...] = ()
    """The services a breach suspends in; empty: every service."""
    suspend_days: int = 0
    """How long a breach suspends before the suspension lifts itself; 0: until reinstated."""
    reinstate_on_resolution: bool = False
    """Whether a breach's resolution (self-monitoring's BreachResolved) reinstates the provider
    that breach suspended; False: a person reinstates."""

    @property
    def name(self) -> str:
        return BREACH_POLICY.format(region=self.region)

    def suspends(self, severity: str, service: str) -> bool:
        return severity in self.suspending_severities and (not self.services or service in self.services)

    def lift_time(self, now: datetime) -> datetime | None:
        return now + timedelta(days=self.suspend_days) if self.suspend_days else None


def new_breach_policy(
    region: str,
    suspending_severities: Sequence[str],
    services: Sequence[str],
    suspend_days: int,
    *,
    reinstate_on_resolution: bool = False,
) -> BreachPolicy:
    """Validate a breach policy; every violation is reported at once."""
    violations: list[FieldViolation] = []
    if not suspending_severities:
        violations.append(FieldViolation("suspending_severities", "must name at least one severity"))
    for index, severity in enumerate(suspending_severities):
        if severity not in SEVERITIES:
            violations.append(
                FieldViolation(f"suspending_severities[{index}]", f"must be one of {', '.join(SEVERITIES)}")
            )
    for index, service in enumerate(services):
        try:
            validate_resource_id(service, f"services[{index}]")
        except InvalidArgument as error:
            violations.extend(error.violations)
    if not 0 <= suspend_days <= MAX_SUSPEND_DAYS:
        violations.append(FieldViolation("suspend_days", f"must be between 0 and {MAX_SUSPEND_DAYS}"))
    raise_if_any(violations, "the breach policy is invalid")
    return BreachPolicy(
        region,
        tuple(dict.fromkeys(suspending_severities)),
        tuple(dict.fromkeys(services)),
        suspend_days,
        reinstate_on_resolution,
    )


def _registration_violations(  # noqa: PLR0917 - the registration's parts, as decide_registration's
    terms: Terms,
    display_name: str,
    evidence: Sequence[Evidence],
    municipalities: Sequence[str],
    languages: Sequence[str],
    price: Decimal | None,
    qualifications: Sequence[str],
    now: datetime,
    *,
    commitment: tuple[bytes, bytes, str] | None = None,
) -> tuple[list[FieldViolation], list[Reason]]:
    """What is malformed in a registration's own parts (not its business ID), and the reasons its
    evidence and attributes fall short of the terms. `commitment`, when given, is the public key,
    the signature over the terms' hash and the field the signature came in."""
    violations: list[FieldViolation] = []
    if violation := check_text(display_name, "registration.display_name", DISPLAY_NAME_MAX_LENGTH):
        violations.append(violation)
    violations.extend(validate_areas(municipalities, languages, "registration"))
    violations.extend(validate_qualifications(qualifications, "registration.qualifications"))
    if price is not None and not (Decimal(0) <= price < Decimal(10) ** 9):
        violations.append(FieldViolation("registration.price", "must be between 0 and 999 999 999.99 euros"))
    if commitment is not None:
        public_key, signature, signature_field = commitment
        try:
            verify_commitment(public_key, signature, terms.content_hash)
        except InvalidArgument as error:
            violations.extend(
                FieldViolation(signature_field, v.description)
                if v.field == "registration.terms_signature"
                else v
                for v in error.violations
            )
    reasons: list[Reason] = []
    try:
        reasons = assess_evidence(terms, evidence, finnish_date(now))
    except InvalidArgument as error:
        violations.extend(error.violations)
    reasons.extend(assess_attributes(terms, municipalities, languages, price, qualifications))
    return violations, reasons


def decide_registration(  # noqa: PLR0917 - positional order fixed by the handlers' contract
    id: str,
    terms: Terms,
    business_id: str,
    display_name: str,
    evidence: Sequence[Evidence],
    public_key: bytes,
    signature: bytes,
    now: datetime,
    *,
    municipalities: Sequence[str] = (),
    languages: Sequence[str] = (),
    price: Decimal | None = None,
    legal_form: LegalForm = LegalForm.UNSPECIFIED,
    qualifications: Sequence[str] = (),
    actor: str = "system",
) -> Registration:
    """Decide a registration at once: REJECTED with a reason per unmet requirement (evidence and
    automatic attribute checks); else IN_REVIEW when a person of the region decides part of the
    terms; else ADMITTED.

    Malformed input (business ID, name, areas, signature, evidence) raises one
    InvalidArgument listing every violation; a document dated after today is then refused
    (InvalidArgument EVIDENCE_FROM_FUTURE) and one past its requirement's maximum age
    (FailedPrecondition EVIDENCE_TOO_OLD), not rejected, so nothing is stored. "today",
    against which documents are aged, is the date of now in Finland.
    """
    require_aware(now)
    violations: list[FieldViolation] = []
    canonical_business_id = business_id
    try:
        canonical_business_id = validate_business_id(business_id, "registration.business_id")
    except InvalidArgument as error:
        violations.extend(error.violations)
    own, reasons = _registration_violations(
        terms,
        display_name,
        evidence,
        municipalities,
        languages,
        price,
        qualifications,
        now,
        commitment=(public_key, signature, "registration.terms_signature"),
    )
    violations.extend(own)
    raise_if_any(violations, "the registration is invalid")
    refuse_future_evidence(terms, evidence, finnish_date(now))
    refuse_aged_evidence(terms, evidence, finnish_date(now))

    registration = _new_registration(
        id,
        terms,
        canonical_business_id,
        display_name,
        RegistrationState.IN_REVIEW,
        now,
        public_key=public_key,
        evidence=evidence,
        municipalities=municipalities,
        languages=languages,
        price=price,
        legal_form=legal_form,
        qualifications=qualifications,
    )
    registration._submitted(terms, reasons, actor, now)
    return registration


def _new_registration(  # noqa: PLR0917 - what every new registration names
    id: str,
    terms: Terms,
    business_id: str,
    display_name: str,
    state: RegistrationState,
    now: datetime,
    *,
    public_key: bytes,
    evidence: Sequence[Evidence],
    municipalities: Sequence[str],
    languages: Sequence[str],
    price: Decimal | None,
    legal_form: LegalForm,
    qualifications: Sequence[str],
) -> Registration:
    return Registration(
        id=id,
        region=terms.region,
        service=terms.service,
        terms_version=terms.version,
        business_id=business_id,
        display_name=display_name.strip(),
        state=state,
        reasons=[],
        created_at=now,
        updated_at=now,
        public_key=public_key,
        evidence=tuple(evidence),
        municipalities=tuple(municipalities),
        languages=tuple(languages),
        price=price,
        legal_form=legal_form,
        qualifications=tuple(qualifications),
    )


def draft_registration(  # noqa: PLR0917 - decide_registration's order, without the signature
    id: str,
    terms: Terms,
    business_id: str,
    display_name: str,
    evidence: Sequence[Evidence],
    public_key: bytes,
    now: datetime,
    *,
    municipalities: Sequence[str] = (),
    languages: Sequence[str] = (),
    price: Decimal | None = None,
    legal_form: LegalForm = LegalForm.UNSPECIFIED,
    qualifications: Sequence[str] = (),
    actor: str = "system",
) -> Registration:
    """Keep a registration as a draft: nothing is decided, nothing is signed. What is given is
    validated as on submission (malformed input raises InvalidArgument with every violation);
    a name, key and evidence may still be missing, and unmet requirements are no reason yet."""
    require_aware(now)
    violations: list[FieldViolation] = []
    canonical_business_id = business_id
    try:
        canonical_business_id = validate_business_id(business_id, "registration.business_id")
    except InvalidArgument as error:
        violations.extend(error.violations)
    violations.extend(
        _draft_violations(
            terms, display_name, evidence, public_key, municipalities, languages, price, qualifications, now
        )
    )
    raise_if_any(violations, "the draft is invalid")
    registration = _new_registration(
        id,
        terms,
        canonical_business_id,
        display_name,
        RegistrationState.DRAFT,
        now,
        public_key=public_key,
        evidence=evidence,
        municipalities=municipalities,
        languages=languages,
        price=price,
        legal_form=legal_form,
        qualifications=qualifications,
    )
    registration._decide(DecisionKind.DRAFT, RegistrationState.DRAFT, (), actor=actor, now=now)
    registration.record(RegistrationDrafted(*registration._common(), now))
    return registration


def _draft_violations(  # noqa: PLR0917 - the draft's parts
    terms: Terms,
    display_name: str,
    evidence: Sequence[Evidence],
    public_key: bytes,
    municipalities: Sequence[str],
    languages: Sequence[str],
    price: Decimal | None,
    qualifications: Sequence[str],
    now: datetime,
) -> list[FieldViolation]:
    violations, _ = _registration_violations(
        terms, display_name or "draft", evidence, municipalities, languages, price, qualifications, now
    )
    if public_key and ed25519_public_key(public_key) is None:
        description = "must be a raw 32-byte Ed25519 public key"
        violations.append(FieldViolation("registration.public_key", description))
    return violations


DRAFT_FIELDS = (
    "terms",
    "display_name",
    "evidence",
    "public_key",
    "municipalities",
    "languages",
    "price",
    "legal_form",
    "qualifications",
)
"""The fields of a draft its provider may change, by their proto names."""


@dataclass(frozen=True)
class DraftChanges:
    """New values for some of a draft's fields: those named in `fields` (of DRAFT_FIELDS)."""

    fields: tuple[str, ...]
    terms: Terms | None = None
    display_name: str = ""
    evidence: tuple[Evidence, ...] = ()
    public_key: bytes = b""
    municipalities: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    price: Decimal | None = None
    legal_form: LegalForm = LegalForm.UNSPECIFIED
    qualifications: tuple[str, ...] = ()


def _update_draft(registration: Registration, changes: DraftChanges, terms: Terms, now: datetime) -> None:
    registration._require(frozenset({RegistrationState.DRAFT}), "changed", "NOT_DRAFT")
    unknown = [name for name in changes.fields if name not in DRAFT_FIELDS]
    if unknown:
        description = f"only {', '.join(DRAFT_FIELDS)} of a draft may change"
        raise InvalidArgument(
            description, [FieldViolation("update_mask", f"{name}: {description}") for name in unknown]
        )
    given = {name: getattr(changes, name) for name in changes.fields if name != "terms"}
    merged = {name: given.get(name, getattr(registration, name)) for name in DRAFT_FIELDS if name != "terms"}
    target = changes.terms if "terms" in changes.fields and changes.terms is not None else terms
    raise_if_any(
        _draft_violations(
            target,
            merged["display_name"],
            merged["evidence"],
            merged["public_key"],
            merged["municipalities"],
            merged["languages"],
            merged["price"],
            merged["qualifications"],
            now,
        ),
        "the draft is invalid",
    )
    registration.terms_version = target.version
    registration.display_name = merged["display_name"].strip()
    registration.evidence = tuple(merged["evidence"])
    registration.public_key = merged["public_key"]
    # A draft has not committed with any key yet: the one it now names is its only key.
    registration.key_history = ()
    registration.municipalities = tuple(merged["municipalities"])
    registration.languages = tuple(merged["languages"])
    registration.price = merged["price"]
    registration.legal_form = merged["legal_form"]
    registration.qualifications = tuple(merged["qualifications"])
    registration.updated_at = require_aware(now)
    registration.record(RegistrationDraftUpdated(*registration._common(), tuple(changes.fields), now))


def _renew_evidence(
    registration: Registration, terms: Terms, renewed: Evidence, actor: str, now: datetime
) -> None:
    registration._require(
        frozenset({RegistrationState.ADMITTED, RegistrationState.SUSPENDED}), "renewed", "NOT_ADMITTED"
    )
    if (terms.region, terms.service, terms.version) != (
        registration.region,
        registration.service,
        registration.terms_version,
    ):
        raise ValueError(f"{terms.name} is not the terms of {registration.name}")
    today = finnish_date(now)
    code = renewed.requirement_code
    requirement = terms.requirement(code)
    violations: list[FieldViolation] = []
    if requirement is None or requirement.kind != RequirementKind.DOCUMENT:
        violations.append(
            FieldViolation("evidence.requirement_code", f"the terms have no document requirement {code!r}")
        )
    if renewed.issued_on is None:
        violations.append(FieldViolation("evidence.issued_on", "a renewed document needs its issue date"))
    if renewed.document_sha256 and _SHA256_HEX.fullmatch(renewed.document_sha256) is None:
        violations.append(FieldViolation("evidence.document_sha256", "must be 64 hexadecimal digits"))
    raise_if_any(violations, "the renewal is invalid")
    if requirement is None or renewed.issued_on is None:
        raise ValueError("unreachable: refused above")
    if _from_future(terms, renewed, today):
        _raise_from_future([FieldViolation("evidence.issued_on", _FUTURE)])
    if (description := _too_old(terms, renewed, today)) is not None:
        _raise_too_old([FieldViolation("evidence.issued_on", description)])
    held = next((e for e in registration.evidence if e.requirement_code == code), None)
    if held is not None and held.issued_on is not None:
        if now >= (expired := _expires(requirement, held.issued_on)):
            raise FailedPrecondition(
                f"the document for {code!r} expired at {expired.isoformat()}: register again",
                reason="EVIDENCE_EXPIRED",
            )
        if renewed.issued_on <= held.issued_on:
            raise FailedPrecondition(
                f"the document for {code!r} held is issued on {held.issued_on.isoformat()}: "
                "a renewal must be issued later",
                [FieldViolation("evidence.issued_on", f"must be after {held.issued_on.isoformat()}")],
                reason="EVIDENCE_NOT_NEWER",
            )
    registration.evidence = (
        *(e for e in registration.evidence if e.requirement_code != code),
        Evidence(code, issued_on=renewed.issued_on, document_sha256=renewed.document_sha256),
    )
    stands_until = _expires(requirement, renewed.issued_on)
    reason = Reason(
        ReasonCode.EVIDENCE_RENEWED,
        code,
        f"The document for {code!r} was renewed, issued on {renewed.issued_on.isoformat()}; "
        f"it stands until {stands_until.date().isoformat()}.",
    )
    # A renewal gives no new why for the state the registration is in: it is only recorded.
    registration._record_decision(DecisionKind.EVIDENCE_RENEWAL, [reason], actor=actor, now=now)
    registration.record(EvidenceRenewed(*registration._common(), code, stands_until, now))
