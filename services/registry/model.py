"""The provider registry's domain: terms, evidence, commitment and the admission decision."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.runtime.domain import (
    Aggregate,
    Event,
    ResourcePattern,
    check_text,
    finnish_date,
    raise_if_any,
    require_aware,
    validate_business_id,
    validate_resource_id,
)
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_MAX_AGE_DAYS",
    "EVENTS",
    "REGISTRATION",
    "SERVICE",
    "TERMS",
    "Evidence",
    "ProviderSuspended",
    "Reason",
    "ReasonCode",
    "Registration",
    "RegistrationAdmitted",
    "RegistrationRejected",
    "RegistrationState",
    "Requirement",
    "RequirementKind",
    "Terms",
    "TermsPublished",
    "assess_evidence",
    "decide_registration",
    "new_terms",
    "parse_requirement_kind",
    "validate_business_id",
    "validate_resource_id",
    "verify_commitment",
]

DEFAULT_MAX_AGE_DAYS = 90
"""Three months: the most a tax or insurance certificate may age under service-voucher practice."""

MAX_MAX_AGE_DAYS = 3650
TITLE_MAX_LENGTH = 200
DISPLAY_NAME_MAX_LENGTH = 200
CODE_MAX_LENGTH = 100
DESCRIPTION_MAX_LENGTH = 2000
MAX_REQUIREMENTS = 100

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

SERVICE = ResourcePattern("regions/{region}/services/{service}")
TERMS = ResourcePattern("regions/{region}/services/{service}/terms/{version:int}")
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


@dataclass(frozen=True)
class RegistrationAdmitted(Event):
    """A provider was admitted: it met every requirement and committed to the terms."""

    registration: str
    terms: str
    region: str
    service: str
    business_id: str
    admit_time: datetime


@dataclass(frozen=True)
class RegistrationRejected(Event):
    """A registration was refused, with a reason code per unmet requirement."""

    registration: str
    terms: str
    region: str
    service: str
    business_id: str
    reason_codes: tuple[str, ...]
    decide_time: datetime


@dataclass(frozen=True)
class ProviderSuspended(Event):
    """An admitted provider was suspended in a region for a service."""

    registration: str
    region: str
    service: str
    business_id: str
    breach: str
    suspend_time: datetime


EVENTS: tuple[type[Event], ...] = (
    TermsPublished,
    RegistrationAdmitted,
    RegistrationRejected,
    ProviderSuspended,
)


class RequirementKind(StrEnum):
    """How a requirement is shown to be met."""

    DECLARATION = "DECLARATION"
    DOCUMENT = "DOCUMENT"


def parse_requirement_kind(name: str, field: str) -> RequirementKind:
    """The kind named "DECLARATION"/"DOCUMENT" (the proto's "REQUIREMENT_KIND_" prefix allowed).

    Anything else, the proto's UNSPECIFIED included, is refused.
    """
    try:
        return RequirementKind(name.removeprefix("REQUIREMENT_KIND_"))
    except ValueError:
        description = "must be DECLARATION or DOCUMENT"
        raise InvalidArgument(description, [FieldViolation(field, description)]) from None


@dataclass(frozen=True)
class Requirement:
    """One requirement of the terms, e.g. entry in the prepayment register."""

    code: str
    description: str
    kind: RequirementKind
    max_age_days: int = DEFAULT_MAX_AGE_DAYS
    """For documents: the oldest a document may be on the day it is submitted."""


@dataclass(frozen=True)
class Terms(Aggregate):
    """One immutable, published version of a region's terms (sääntökirja) for a service."""

    region: str
    service: str
    version: int
    title: str
    requirements: tuple[Requirement, ...]
    published_at: datetime | None = field(default=None, compare=False)
    """When the version was published; not part of the content providers sign."""

    @property
    def name(self) -> str:
        return TERMS.format(region=self.region, service=self.service, version=self.version)

    @property
    def canonical_json(self) -> bytes:
        """The canonical form providers hash and sign.

        UTF-8 JSON, keys sorted at every level, no whitespace (separators "," and ":"),
        non-ASCII characters written as-is (not \\u-escaped), of the object
        {"region", "service", "version", "title", "requirements": [{"code",
        "description", "kind", "max_age_days"}, ...]}, requirements in published
        order, kind as "DECLARATION" or "DOCUMENT", version and max_age_days as
        JSON integers. For example:
        {"region":"uusimaa","requirements":[{"code":"tax","description":"Verovelkatodistus",
        "kind":"DOCUMENT","max_age_days":90}],"service":"recruitment","title":"Rekrytointi","version":1}
        """
        document = {
            "region": self.region,
            "service": self.service,
            "version": self.version,
            "title": self.title,
            "requirements": [
                {
                    "code": requirement.code,
                    "description": requirement.description,
                    "kind": str(requirement.kind),
                    "max_age_days": requirement.max_age_days,
                }
                for requirement in self.requirements
            ],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @property
    def content_hash(self) -> str:
        """Lowercase hex SHA-256 of canonical_json; a provider commits by signing its 32 raw bytes."""
        return hashlib.sha256(self.canonical_json).hexdigest()

    def requirement(self, code: str) -> Requirement | None:
        """The requirement with this code, if the terms have one."""
        return next((r for r in self.requirements if r.code == code), None)


def publish_terms(  # noqa: PLR0917 - new_terms' arguments and the instant
    region: str,
    service: str,
    version: int,
    title: str,
    requirements: Sequence[Requirement],
    now: datetime,
) -> Terms:
    """Validate and publish a terms version at `now`; records TermsPublished."""
    require_aware(now)
    draft = new_terms(region, service, version, title, requirements)
    terms = replace(draft, published_at=now)
    terms.record(TermsPublished(terms.name, region, service, terms.content_hash, now))
    return terms


def new_terms(
    region: str,
    service: str,
    version: int,
    title: str,
    requirements: Sequence[Requirement],
) -> Terms:
    """Validate and build a terms version; every violation is reported at once.

    A max_age_days of 0 means "not given" (proto3 cannot tell the two apart) and
    becomes the three-month default.
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
    if not requirements:
        violations.append(FieldViolation("terms.requirements", "must list at least one requirement"))
    if len(requirements) > MAX_REQUIREMENTS:
        # A cap on every repeated field: the event and the signed canonical form must stay small.
        violations.append(
            FieldViolation("terms.requirements", f"must list at most {MAX_REQUIREMENTS} requirements")
        )
        requirements = requirements[:MAX_REQUIREMENTS]

    normalised: list[Requirement] = []
    seen_codes: set[str] = set()
    for index, requirement in enumerate(requirements):
        path = f"terms.requirements[{index}]"
        if (violation := check_text(requirement.code, f"{path}.code", CODE_MAX_LENGTH)) is not None:
            violations.append(violation)
        elif requirement.code in seen_codes:
            violations.append(FieldViolation(f"{path}.code", f"duplicates code {requirement.code!r}"))
        seen_codes.add(requirement.code)
        if violation := check_text(requirement.description, f"{path}.description", DESCRIPTION_MAX_LENGTH):
            violations.append(violation)
        if not isinstance(requirement.kind, RequirementKind):
            violations.append(FieldViolation(f"{path}.kind", "must be DECLARATION or DOCUMENT"))
        max_age_days = requirement.max_age_days or DEFAULT_MAX_AGE_DAYS
        if requirement.kind == RequirementKind.DOCUMENT and not 1 <= max_age_days <= MAX_MAX_AGE_DAYS:
            violations.append(
                FieldViolation(f"{path}.max_age_days", f"must be between 1 and {MAX_MAX_AGE_DAYS} days")
            )
        normalised.append(replace(requirement, max_age_days=max_age_days))

    raise_if_any(violations, "the terms are invalid")
    return Terms(region, service, version, title, tuple(normalised))


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
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
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
    for requirement in terms.requirements:
        reason = _shortfall(requirement, by_code.get(requirement.code), today)
        if reason is not None:
            reasons.append(reason)
    return reasons


def _shortfall(requirement: Requirement, evidence: Evidence | None, today: date) -> Reason | None:
    code = requirement.code
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
    """Where a registration stands."""

    ADMITTED = "ADMITTED"
    REJECTED = "REJECTED"
    SUSPENDED = "SUSPENDED"


@dataclass
class Registration(Aggregate):
    """A provider's registration (ilmoittautuminen) against one terms version, and the decision on it."""

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
    """The raw Ed25519 key the provider committed with."""
    evidence: tuple[Evidence, ...] = ()

    @property
    def name(self) -> str:
        return REGISTRATION.format(region=self.region, service=self.service, registration=self.id)

    @property
    def terms_name(self) -> str:
        return TERMS.format(region=self.region, service=self.service, version=self.terms_version)

    @property
    def active(self) -> bool:
        """Admitted or suspended: what allows one registration per provider, region and service."""
        return self.state != RegistrationState.REJECTED

    @property
    def listed(self) -> bool:
        """Whether customers may choose this provider: admitted and not suspended."""
        return self.state == RegistrationState.ADMITTED

    def suspend(self, breach: str, now: datetime) -> bool:
        """Suspend an admitted provider after a quality breach; False when it was suspended already.

        Idempotent so that a redelivered breach event changes nothing. A refused
        registration was never listed, so there is nothing to suspend.
        """
        require_aware(now)
        if not breach:
            raise ValueError("a suspension must name the breach behind it")
        if self.state == RegistrationState.SUSPENDED:
            return False
        if self.state == RegistrationState.REJECTED:
            raise FailedPrecondition(
                f"registration {self.id} was rejected and cannot be suspended",
                reason="REGISTRATION_REJECTED",
            )
        self.state = RegistrationState.SUSPENDED
        self.reasons = [
            Reason(
                ReasonCode.QUALITY_BREACH, breach, f"Suspended in this region after quality breach {breach}."
            )
        ]
        self.suspended_by_breach = breach
        self.updated_at = now
        self.record(ProviderSuspended(self.name, self.region, self.service, self.business_id, breach, now))
        return True


def decide_registration(  # noqa: PLR0917 - positional order fixed by the handlers' contract
    id: str,
    terms: Terms,
    business_id: str,
    display_name: str,
    evidence: Sequence[Evidence],
    public_key: bytes,
    signature: bytes,
    now: datetime,
) -> Registration:
    """Decide a registration at once: ADMITTED when every requirement is met, else REJECTED with reasons.

    Malformed input (business ID, name, signature, evidence) raises one
    InvalidArgument listing every violation. "today", against which documents are
    aged, is the date of now in Finland.
    """
    require_aware(now)
    violations: list[FieldViolation] = []
    canonical_business_id = business_id
    try:
        canonical_business_id = validate_business_id(business_id, "registration.business_id")
    except InvalidArgument as error:
        violations.extend(error.violations)
    if violation := check_text(display_name, "registration.display_name", DISPLAY_NAME_MAX_LENGTH):
        violations.append(violation)
    try:
        verify_commitment(public_key, signature, terms.content_hash)
    except InvalidArgument as error:
        violations.extend(error.violations)
    reasons: list[Reason] = []
    try:
        reasons = assess_evidence(terms, evidence, finnish_date(now))
    except InvalidArgument as error:
        violations.extend(error.violations)
    raise_if_any(violations, "the registration is invalid")

    registration = Registration(
        id=id,
        region=terms.region,
        service=terms.service,
        terms_version=terms.version,
        business_id=canonical_business_id,
        display_name=display_name.strip(),
        state=RegistrationState.REJECTED if reasons else RegistrationState.ADMITTED,
        reasons=reasons,
        created_at=now,
        updated_at=now,
        public_key=public_key,
        evidence=tuple(evidence),
    )
    common = (registration.name, registration.terms_name, terms.region, terms.service, canonical_business_id)
    if reasons:
        registration.record(RegistrationRejected(*common, tuple(r.code for r in reasons), now))
    else:
        registration.record(RegistrationAdmitted(*common, now))
    return registration
