"""The organisers of growth services and the national service catalogue, as data: the regions
(maakunnat), the Uusimaa joint municipal authority (kuntayhtymä), and the kinds of growth
service every organiser may open to providers. A region may add services of its own."""

from __future__ import annotations

from services.registry.model import CatalogueService, Organiser, OrganiserKind

REGIONS = {
    "uusimaa": "Uusimaa",
    "varsinais-suomi": "Varsinais-Suomi",
    "satakunta": "Satakunta",
    "kanta-hame": "Kanta-Häme",
    "pirkanmaa": "Pirkanmaa",
    "paijat-hame": "Päijät-Häme",
    "kymenlaakso": "Kymenlaakso",
    "etela-karjala": "Etelä-Karjala",
    "etela-savo": "Etelä-Savo",
    "pohjois-savo": "Pohjois-Savo",
    "pohjois-karjala": "Pohjois-Karjala",
    "keski-suomi": "Keski-Suomi",
    "etela-pohjanmaa": "Etelä-Pohjanmaa",
    "pohjanmaa": "Pohjanmaa",
    "keski-pohjanmaa": "Keski-Pohjanmaa",
    "pohjois-pohjanmaa": "Pohjois-Pohjanmaa",
    "kainuu": "Kainuu",
    "lappi": "Lappi",
}
"""The 18 mainland regions, by resource id."""

ORGANISERS: tuple[Organiser, ...] = (
    *(Organiser(id, name, OrganiserKind.REGION) for id, name in REGIONS.items()),
    Organiser(
        "uusimaa-joint-authority",
        "Uusimaan kasvupalvelujen kuntayhtymä",
        OrganiserKind.JOINT_MUNICIPAL_AUTHORITY,
    ),
)
"""Who may publish terms: the regions, and in Uusimaa the capital-area joint municipal authority."""

NATIONAL_SERVICES: tuple[CatalogueService, ...] = tuple(
    CatalogueService(id, name, national=True)
    for id, name in (
        ("recruitment", "Recruitment and job matching"),
        ("competence-development", "Competence development and training"),
        ("career-guidance", "Career guidance"),
        ("business-development", "Business development"),
        ("internationalisation", "Internationalisation"),
        ("integration", "Integration of immigrants"),
    )
)

ORGANISER_IDS = frozenset(organiser.id for organiser in ORGANISERS)
NATIONAL_SERVICE_IDS = frozenset(service.id for service in NATIONAL_SERVICES)
