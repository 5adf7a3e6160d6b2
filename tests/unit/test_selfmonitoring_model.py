"""Unit tests of the self-monitoring domain: indicators, observations, windows, evaluation, breaches."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.runtime.errors import InvalidArgument
from services.selfmonitoring.model import (
    Breach,
    BreachOpened,
    BreachResolved,
    BreachState,
    EscalationReason,
    Indicator,
    MetricKind,
    Observation,
    ObservationSource,
    RegionBreachOpened,
    RegionBreachResolved,
    Scope,
    Severity,
    Verdict,
    WarningCleared,
    WarningRaised,
    WindowStats,
    escalate_breach,
    evaluate,
    evaluate_warning,
    is_within_deadline,
    new_indicator,
    new_observation,
    open_breach,
    parse_severity,
    raise_warning,
    resolve_breach,
    window_bounds,
    window_stats,
    worst_group,
)

TODAY = date(2025, 3, 14)
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
PROVIDER = "0737546-2"


def indicator(**overrides) -> Indicator:
    """The service-need assessment indicator: 14 days from the start of job search."""
    arguments: dict[str, Any] = {
        "region": "uusimaa",
        "indicator_id": "need-assessment-14d",
        "display_name": "Service need assessed within 2 weeks",
        "service": "recruitment",
        "deadline_days": 14,
        "threshold": 0.9,
        "window_days": 30,
        "minimum_sample": 10,
        "severity": Severity.SERIOUS,
    }
    arguments.update(overrides)
    return new_indicator(**arguments)


def observation(days_taken: int, completed_on: date = TODAY, key: str = "case-1") -> Observation:
    return new_observation(
        f"obs-{key}", PROVIDER, key, completed_on - timedelta(days=days_taken), completed_on, today=TODAY
    )


def stats(sample_size: int, within: int) -> WindowStats:
    """A window of the region's own case data: each observation weighs 1."""
    return WindowStats(sample_size, float(sample_size), float(within))


def fields_of(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [violation.field for violation in error.value.violations]


# --- indicators ---------------------------------------------------------------------------------


def test_builds_a_valid_indicator():
    built = indicator(display_name="  Need assessed  ")
    assert built.display_name == "Need assessed"
    assert (built.region, built.indicator_id, built.severity) == (
        "uusimaa",
        "need-assessment-14d",
        Severity.SERIOUS,
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"region": "Uusimaa"}, "parent"),
        ({"indicator_id": "Need_14d"}, "indicator_id"),
        ({"service": ""}, "indicator.service"),
        ({"display_name": " "}, "indicator.display_name"),
        ({"display_name": "x" * 201}, "indicator.display_name"),
        ({"deadline_days": 0}, "indicator.share_within_deadline.deadline_days"),
        ({"deadline_days": 366}, "indicator.share_within_deadline.deadline_days"),
        ({"threshold": 0.0}, "indicator.share_within_deadline.minimum_share"),
        ({"threshold": 1.01}, "indicator.share_within_deadline.minimum_share"),
        ({"threshold": float("nan")}, "indicator.share_within_deadline.minimum_share"),
        ({"window_days": 0}, "indicator.window_days"),
        ({"window_days": 3661}, "indicator.window_days"),
        ({"minimum_sample": 0}, "indicator.minimum_sample"),
        ({"severity": None}, "indicator.severity"),
    ],
)
def test_rejects_an_indicator_field_out_of_range(overrides, field):
    with pytest.raises(InvalidArgument) as error:
        indicator(**overrides)
    assert fields_of(error) == [field]


@pytest.mark.parametrize(
    "overrides",
    [
        {"deadline_days": 1},
        {"deadline_days": 365},
        {"threshold": 1.0},
        {"threshold": 0.001},
        {"window_days": 1},
        {"window_days": 3660},
        {"minimum_sample": 1},
    ],
)
def test_accepts_indicator_fields_on_their_range_limits(overrides):
    indicator(**overrides)


def test_reports_every_indicator_violation_at_once():
    with pytest.raises(InvalidArgument) as error:
        indicator(deadline_days=0, threshold=2.0, window_days=0, minimum_sample=0)
    assert fields_of(error) == [
        "indicator.share_within_deadline.deadline_days",
        "indicator.share_within_deadline.minimum_share",
        "indicator.window_days",
        "indicator.minimum_sample",
    ]


def test_parses_severity_by_name_with_or_without_proto_prefix():
    assert parse_severity("SERIOUS") is Severity.SERIOUS
    assert parse_severity("SEVERITY_WARNING") is Severity.WARNING
    with pytest.raises(InvalidArgument) as error:
        parse_severity("SEVERITY_UNSPECIFIED")
    assert fields_of(error) == ["indicator.severity"]


# --- observations -------------------------------------------------------------------------------


def test_observation_stores_the_canonical_provider_business_id():
    recorded = new_observation("obs-1", " 737546-2 ", "case-1", date(2025, 3, 1), TODAY, today=TODAY)
    assert recorded.provider == "0737546-2"


def test_observation_may_complete_on_the_day_it_started_and_today():
    new_observation("obs-1", PROVIDER, "case-1", TODAY, TODAY, today=TODAY)


def test_rejects_observation_completed_before_it_started():
    with pytest.raises(InvalidArgument) as error:
        new_observation("obs-1", PROVIDER, "case-1", TODAY, TODAY - timedelta(days=1), today=TODAY)
    assert fields_of(error) == ["observation.completed_on"]


def test_rejects_observation_completed_in_the_future():
    tomorrow = TODAY + timedelta(days=1)
    with pytest.raises(InvalidArgument) as error:
        new_observation("obs-1", PROVIDER, "case-1", TODAY, tomorrow, today=TODAY)
    assert fields_of(error) == ["observation.completed_on"]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"observation_id": ""}, "observation.observation_id"),
        ({"observation_id": "x" * 129}, "observation.observation_id"),
        ({"provider": "0737546-3"}, "observation.provider"),
        ({"case_key": " "}, "observation.case_key"),
        ({"case_key": "k" * 129}, "observation.case_key"),
    ],
)
def test_rejects_observation_with_malformed_identifiers(arguments, field):
    values = {"observation_id": "obs-1", "provider": PROVIDER, "case_key": "case-1"} | arguments
    with pytest.raises(InvalidArgument) as error:
        new_observation(**values, started_on=TODAY, completed_on=TODAY, today=TODAY)
    assert fields_of(error) == [field]


@pytest.mark.parametrize("case_key", ["131052-308T", "010101A123B", "311299+999X"])
def test_rejects_a_personal_identity_code_as_case_key(case_key):
    with pytest.raises(InvalidArgument, match="pseudonym") as error:
        new_observation("obs-1", PROVIDER, case_key, TODAY, TODAY, today=TODAY)
    assert fields_of(error) == ["observation.case_key"]


# --- deadline and window ------------------------------------------------------------------------


@pytest.mark.parametrize(("days_taken", "within"), [(0, True), (13, True), (14, True), (15, False)])
def test_case_is_within_deadline_up_to_and_including_the_deadline_day(days_taken, within):
    assert is_within_deadline(indicator(deadline_days=14), observation(days_taken)) is within


def test_window_ends_on_as_of_and_spans_window_days_inclusive():
    start, end = window_bounds(indicator(window_days=30), TODAY)
    assert (start, end) == (date(2025, 2, 13), TODAY)
    assert (end - start).days + 1 == 30


def test_one_day_window_is_just_as_of():
    assert window_bounds(indicator(window_days=1), TODAY) == (TODAY, TODAY)


def test_window_stats_count_only_cases_completed_inside_the_window():
    watched = indicator(window_days=30, deadline_days=14)
    start, _ = window_bounds(watched, TODAY)
    observations = [
        observation(3, completed_on=start, key="first-day"),
        observation(20, completed_on=TODAY, key="late-today"),
        observation(1, completed_on=start - timedelta(days=1), key="day-before-window"),
    ]
    assert window_stats(watched, observations, TODAY) == stats(2, 1)


def test_empty_window_has_share_one():
    assert indicator().value(WindowStats(0, 0.0, 0.0)) == 1.0


def test_share_is_within_deadline_over_sample():
    assert indicator().value(stats(8, 6)) == 0.75


@pytest.mark.parametrize(("sample_size", "weight"), [(-1, 1.0), (1, -1.0)])
def test_window_stats_refuse_impossible_counts(sample_size, weight):
    with pytest.raises(ValueError):
        WindowStats(sample_size, weight, 0.0)


# --- evaluation ---------------------------------------------------------------------------------


def test_breach_opens_at_exactly_the_minimum_sample():
    assert evaluate(indicator(minimum_sample=10), stats(10, 5), breach_open=False) is Verdict.OPEN


def test_no_breach_one_below_the_minimum_sample():
    assert evaluate(indicator(minimum_sample=10), stats(9, 0), breach_open=False) is Verdict.NONE


def test_share_exactly_at_the_threshold_is_not_a_breach():
    assert (
        evaluate(indicator(threshold=0.9, minimum_sample=10), stats(10, 9), breach_open=False) is Verdict.NONE
    )


def test_share_just_below_the_threshold_is_a_breach():
    assert (
        evaluate(indicator(threshold=0.9, minimum_sample=20), stats(20, 17), breach_open=False)
        is Verdict.OPEN
    )


def test_no_second_breach_while_one_is_open():
    assert evaluate(indicator(minimum_sample=10), stats(10, 0), breach_open=True) is Verdict.NONE


def test_perfect_share_never_breaches_even_with_a_full_threshold():
    assert (
        evaluate(indicator(threshold=1.0, minimum_sample=1), stats(5, 5), breach_open=False) is Verdict.NONE
    )


# --- breaches -----------------------------------------------------------------------------------


def test_open_breach_records_value_threshold_and_sample():
    watched = indicator(threshold=0.9, severity=Severity.WARNING)
    breach = open_breach("b-1", watched, PROVIDER, stats(20, 15), NOW)
    assert breach == Breach(
        id="b-1",
        region="uusimaa",
        indicator_id="need-assessment-14d",
        provider=PROVIDER,
        service="recruitment",
        severity=Severity.WARNING,
        value=0.75,
        threshold=0.9,
        sample_size=20,
        opened_at=NOW,
        recovery_threshold=0.9,
    )
    assert not breach.suspends_provider


def test_serious_breach_suspends_the_provider():
    breach = open_breach("b-1", indicator(severity=Severity.SERIOUS), PROVIDER, stats(20, 15), NOW)
    assert breach.suspends_provider


def test_open_breach_needs_a_timezone_aware_now():
    with pytest.raises(ValueError, match="timezone-aware"):
        open_breach("b-1", indicator(), PROVIDER, stats(20, 15), datetime(2025, 3, 14, 12, 0))


# --- hysteresis and sources ---------------------------------------------------------------------


def test_an_open_breach_resolves_only_at_the_recovery_share():
    watched = indicator(threshold=0.8, recovery_threshold=0.9, minimum_sample=10)
    assert evaluate(watched, stats(10, 8), breach_open=True) is Verdict.NONE  # back at the threshold
    assert evaluate(watched, stats(10, 9), breach_open=True) is Verdict.RESOLVE
    assert evaluate(watched, stats(10, 8), breach_open=False) is Verdict.NONE


def test_a_sample_below_the_minimum_neither_opens_nor_resolves():
    watched = indicator(threshold=0.8, minimum_sample=10)
    assert evaluate(watched, stats(9, 9), breach_open=True) is Verdict.NONE


def test_a_recovery_share_below_the_minimum_share_is_refused():
    with pytest.raises(InvalidArgument) as caught:
        indicator(threshold=0.8, recovery_threshold=0.7)
    assert fields_of(caught) == ["indicator.share_within_deadline.recovery_share"]


def test_without_a_recovery_share_the_minimum_share_is_used():
    assert indicator(threshold=0.8).recovery_threshold == 0.8


def test_a_resolved_breach_carries_the_value_that_resolved_it():
    watched = indicator(threshold=0.9)
    breach = open_breach("b-1", watched, PROVIDER, stats(20, 15), NOW)
    resolved = resolve_breach(breach, 0.95, stats(20, 19), NOW + timedelta(days=3))
    assert (resolved.state, resolved.value, resolved.resolved_at) == (
        BreachState.RESOLVED,
        0.95,
        NOW + timedelta(days=3),
    )
    [(_, event)] = resolved.pull_events()
    assert isinstance(event, BreachResolved)
    assert event.breach.resolve_time == NOW + timedelta(days=3)


def test_a_providers_report_weighs_half_of_the_regions_own_case_data():
    watched = indicator(window_days=30, deadline_days=14)
    region_late = observation(20, key="region-late")
    provider_on_time = new_observation(
        "p-1",
        PROVIDER,
        "p-1",
        TODAY - timedelta(days=2),
        TODAY,
        today=TODAY,
        source=ObservationSource.PROVIDER_REPORT,
    )
    window = window_stats(watched, [region_late, provider_on_time], TODAY)
    assert window.sample_size == 2
    assert watched.value(window) == pytest.approx(0.5 / 1.5)


def test_observations_under_one_id_report_the_fields_they_differ_in():
    first = observation(3, key="case-1")
    assert first.differs_from(first) == []
    assert observation(5, key="case-1").differs_from(first) == ["observation.started_on"]


# --- metric kinds -------------------------------------------------------------------------------


def measured(kind: MetricKind, threshold: float, **overrides: Any) -> Indicator:
    return indicator(kind=kind, threshold=threshold, deadline_days=0, minimum_sample=1, **overrides)


def valued(
    value: float, key: str, source: ObservationSource = ObservationSource.REGION_CASE_DATA
) -> Observation:
    return new_observation(key, PROVIDER, key, TODAY, TODAY, today=TODAY, source=source, value=value)


def test_a_rate_is_the_weighted_share_of_outcomes_reached():
    rate = measured(MetricKind.RATE, 0.5)
    window = window_stats(rate, [valued(1, "a"), valued(0, "b"), valued(0, "c"), valued(1, "d")], TODAY)
    assert rate.value(window) == 0.5
    assert evaluate(rate, window, breach_open=False) is Verdict.NONE
    with pytest.raises(InvalidArgument) as caught:
        rate.check(valued(0.5, "e"))
    assert fields_of(caught) == ["observation.value"]


def test_a_mean_breaches_below_its_threshold():
    mean = measured(MetricKind.MEAN, 3.5, recovery_threshold=4.0)
    window = window_stats(mean, [valued(3, "a"), valued(4, "b"), valued(3, "c")], TODAY)
    assert mean.value(window) == pytest.approx(10 / 3)
    assert evaluate(mean, window, breach_open=False) is Verdict.OPEN
    recovering = window_stats(mean, [valued(3, "a"), valued(4, "b"), valued(4.5, "c")], TODAY)
    assert evaluate(mean, recovering, breach_open=True) is Verdict.NONE  # 3.83: above 3.5, below 4


def test_complaints_per_100_customers_breach_above_their_threshold_and_recover_below_recovery():
    complaints = measured(MetricKind.COUNT_PER_100_CUSTOMERS, 5.0, recovery_threshold=3.0)
    customers = [valued(0, f"c{i}") for i in range(18)] + [valued(1, "x"), valued(1, "y")]
    window = window_stats(complaints, customers, TODAY)
    assert complaints.value(window) == pytest.approx(10.0)
    assert evaluate(complaints, window, breach_open=False) is Verdict.OPEN
    calmer = window_stats(complaints, [*customers[:18], valued(0, "x"), valued(0, "y")] * 1, TODAY)
    assert evaluate(complaints, calmer, breach_open=True) is Verdict.RESOLVE


def test_a_recovery_threshold_above_a_lower_is_better_threshold_is_refused():
    with pytest.raises(InvalidArgument) as caught:
        measured(MetricKind.COUNT_PER_100_CUSTOMERS, 5.0, recovery_threshold=6.0)
    assert fields_of(caught) == ["indicator.measure.recovery_threshold"]


def test_a_share_within_a_deadline_needs_the_day_the_case_started():
    with pytest.raises(InvalidArgument) as caught:
        indicator().check(observation(0), started=False)
    assert fields_of(caught) == ["observation.started_on"]


# --- warning thresholds -------------------------------------------------------------------------


def test_a_share_in_the_warning_band_raises_a_warning_and_no_breach():
    watched = indicator(threshold=0.8, warning_threshold=0.9, recovery_threshold=0.95)
    window = stats(10, 8)  # 0.8: below the warning share, at the breach share
    assert evaluate_warning(watched, window, warning_open=False) is Verdict.OPEN
    assert evaluate(watched, window, breach_open=False) is Verdict.NONE


def test_a_value_past_the_breach_threshold_opens_a_breach_not_a_warning():
    watched = indicator(threshold=0.8, warning_threshold=0.9, recovery_threshold=0.95)
    window = stats(10, 7)
    assert evaluate(watched, window, breach_open=False) is Verdict.OPEN
    assert evaluate_warning(watched, window, warning_open=False) is Verdict.NONE


def test_a_warning_clears_only_at_the_recovery_threshold():
    watched = indicator(threshold=0.8, warning_threshold=0.9, recovery_threshold=0.95)
    assert evaluate_warning(watched, WindowStats(20, 20.0, 18.0), warning_open=True) is Verdict.NONE
    assert evaluate_warning(watched, WindowStats(20, 20.0, 19.0), warning_open=True) is Verdict.RESOLVE


def test_a_warning_needs_the_minimum_sample():
    watched = indicator(threshold=0.8, warning_threshold=0.9)
    assert evaluate_warning(watched, stats(9, 8), warning_open=False) is Verdict.NONE


def test_an_indicator_without_a_warning_threshold_never_warns():
    watched = indicator(threshold=0.9)
    assert watched.warning_threshold is None
    assert evaluate_warning(watched, stats(10, 0), warning_open=False) is Verdict.NONE
    assert evaluate(watched, stats(10, 0), breach_open=False) is Verdict.OPEN


def test_without_a_recovery_threshold_a_warning_threshold_is_where_values_recover():
    watched = indicator(threshold=0.8, warning_threshold=0.9)
    assert watched.recovery_threshold == 0.9


def test_a_raised_warning_carries_value_warning_threshold_and_window_and_suspends_no_one():
    watched = indicator(
        threshold=0.8, warning_threshold=0.9, recovery_threshold=0.95, severity=Severity.SERIOUS
    )
    warning = raise_warning("w1", watched, PROVIDER, stats(10, 8), NOW, as_of=TODAY)
    assert (warning.warning, warning.severity, warning.value, warning.threshold) == (
        True,
        Severity.WARNING,
        0.8,
        0.9,
    )
    assert (warning.window_start, warning.window_end) == window_bounds(watched, TODAY)
    assert not warning.suspends_provider
    ((_, event),) = warning.pull_events()
    assert isinstance(event, WarningRaised) and event.breach.warning
    cleared = resolve_breach(warning, 0.96, stats(25, 24), NOW)
    ((_, event),) = cleared.pull_events()
    assert isinstance(event, WarningCleared) and event.breach.state is BreachState.RESOLVED


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        # A share breaches below its threshold: the warning share must lie above it.
        ({"threshold": 0.9, "warning_threshold": 0.8}, "indicator.share_within_deadline.warning_share"),
        ({"threshold": 0.9, "warning_threshold": 0.9}, "indicator.share_within_deadline.warning_share"),
        ({"threshold": 0.8, "warning_threshold": 1.5}, "indicator.share_within_deadline.warning_share"),
        (
            {"threshold": 0.8, "warning_threshold": float("nan")},
            "indicator.share_within_deadline.warning_share",
        ),
        (
            {"threshold": 0.8, "warning_threshold": 0.9, "recovery_threshold": 0.85},
            "indicator.share_within_deadline.recovery_share",
        ),
        # Complaints breach above their threshold: the warning must lie below it.
        (
            {
                "kind": MetricKind.COUNT_PER_100_CUSTOMERS,
                "deadline_days": 0,
                "threshold": 5.0,
                "warning_threshold": 6.0,
            },
            "indicator.measure.warning_threshold",
        ),
        (
            {
                "kind": MetricKind.COUNT_PER_100_CUSTOMERS,
                "deadline_days": 0,
                "threshold": 5.0,
                "warning_threshold": 3.0,
                "recovery_threshold": 4.0,
            },
            "indicator.measure.recovery_threshold",
        ),
    ],
)
def test_thresholds_out_of_order_with_the_indicators_direction_are_refused(overrides, field):
    with pytest.raises(InvalidArgument) as error:
        indicator(**overrides)
    assert field in fields_of(error)


def test_complaints_warn_above_the_warning_threshold_and_breach_above_the_breach_threshold():
    watched = indicator(
        kind=MetricKind.COUNT_PER_100_CUSTOMERS,
        deadline_days=0,
        threshold=5.0,
        warning_threshold=3.0,
        recovery_threshold=2.0,
    )
    four_per_100 = WindowStats(100, 100.0, 4.0)
    assert evaluate_warning(watched, four_per_100, warning_open=False) is Verdict.OPEN
    assert evaluate(watched, four_per_100, breach_open=False) is Verdict.NONE
    six_per_100 = WindowStats(100, 100.0, 6.0)
    assert evaluate(watched, six_per_100, breach_open=False) is Verdict.OPEN
    assert evaluate_warning(watched, six_per_100, warning_open=True) is Verdict.NONE
    assert evaluate_warning(watched, WindowStats(100, 100.0, 2.0), warning_open=True) is Verdict.RESOLVE


# --- scopes -------------------------------------------------------------------------------------


def scoped(scope: Scope, **overrides: Any) -> Indicator:
    return indicator(scope=scope, **overrides)


@pytest.mark.parametrize(
    ("scope", "field"),
    [
        (Scope.PROVIDER, "observation.provider"),
        (Scope.SERVICE, "observation.service"),
        (Scope.MUNICIPALITY, "observation.municipality"),
    ],
)
def test_an_observation_without_the_key_its_scope_groups_by_is_refused(scope, field):
    with pytest.raises(InvalidArgument) as error:
        new_observation("o1", "", "case-1", TODAY, TODAY, today=TODAY, scope=scope)
    assert fields_of(error) == [field]


def test_a_region_scoped_observation_needs_no_provider_and_groups_with_all_others():
    whole = scoped(Scope.REGION)
    seen = new_observation("o1", "", "case-1", TODAY, TODAY, today=TODAY, scope=Scope.REGION)
    assert whole.scope_key(seen) == ""


def test_observations_group_by_their_scope_key():
    place = new_observation(
        "o1", PROVIDER, "c", TODAY, TODAY, today=TODAY, municipality="837", service="training"
    )
    assert scoped(Scope.MUNICIPALITY).scope_key(place) == "837"
    assert scoped(Scope.SERVICE).scope_key(place) == "training"
    assert scoped(Scope.PROVIDER).scope_key(place) == PROVIDER


@pytest.mark.parametrize("code", ["83", "8377", "abc", "Tampere"])
def test_a_municipality_that_is_no_three_digit_code_is_refused(code):
    with pytest.raises(InvalidArgument) as error:
        new_observation("o1", "", "c", TODAY, TODAY, today=TODAY, municipality=code, scope=Scope.MUNICIPALITY)
    assert fields_of(error) == ["observation.municipality"]


def test_a_municipality_breach_names_its_scope_alerts_the_region_and_suspends_no_provider():
    watched = scoped(Scope.MUNICIPALITY)  # SERIOUS
    breach = open_breach("b1", watched, "837", stats(10, 5), NOW, as_of=TODAY)
    assert (breach.scope, breach.scope_key, breach.provider) == (Scope.MUNICIPALITY, "837", "")
    assert not breach.suspends_provider
    ((_, event),) = breach.pull_events()
    assert isinstance(event, RegionBreachOpened)
    assert (event.breach.scope, event.breach.scope_key) == (Scope.MUNICIPALITY, "837")
    with pytest.raises(ValueError, match="no provider's breach"):
        escalate_breach(breach, EscalationReason.RECURRED, NOW)
    ((_, resolved),) = resolve_breach(breach, 0.96, stats(25, 24), NOW).pull_events()
    assert isinstance(resolved, RegionBreachResolved)


def test_a_provider_breach_is_keyed_by_its_provider_and_still_records_breach_opened():
    breach = open_breach("b1", indicator(), PROVIDER, stats(10, 5), NOW, as_of=TODAY)
    assert (breach.scope, breach.scope_key, breach.provider) == (Scope.PROVIDER, PROVIDER, PROVIDER)
    assert breach.suspends_provider
    ((_, event),) = breach.pull_events()
    assert isinstance(event, BreachOpened)


# --- equal treatment ----------------------------------------------------------------------------


def equal_treatment(**overrides: Any) -> Indicator:
    arguments: dict[str, Any] = {
        "kind": MetricKind.EQUAL_TREATMENT,
        "deadline_days": 0,
        "threshold": 0.8,
        "recovery_threshold": 0.9,
        "minimum_sample": 4,
    }
    arguments.update(overrides)
    return indicator(**arguments)


def test_equal_treatment_compares_the_worst_sampled_group_with_the_overall_rate():
    watched = equal_treatment()
    overall = WindowStats(12, 12.0, 6.0)  # 0.5
    groups = {
        "age-55-plus": WindowStats(4, 4.0, 1.0),  # 0.25: half the overall rate
        "lang-sv": WindowStats(4, 4.0, 3.0),
        "tiny": WindowStats(3, 3.0, 0.0),  # below the minimum sample: says nothing yet
        "other": WindowStats(1, 1.0, 2.0),
    }
    worst = worst_group(watched, overall, groups)
    assert (worst.group, worst.sample_size) == ("age-55-plus", 4)
    assert watched.value(worst) == pytest.approx(0.5)
    assert evaluate(watched, worst, breach_open=False) is Verdict.OPEN
    breach = open_breach("b1", watched, PROVIDER, worst, NOW, as_of=TODAY)
    assert (breach.group, breach.value, breach.threshold) == ("age-55-plus", pytest.approx(0.5), 0.8)


def test_equal_treatment_without_a_sampled_group_decides_nothing():
    watched = equal_treatment()
    worst = worst_group(watched, WindowStats(3, 3.0, 0.0), {"tiny": WindowStats(3, 3.0, 0.0)})
    assert evaluate(watched, worst, breach_open=False) is Verdict.NONE


def test_equal_treatment_when_no_one_reached_the_outcome_is_no_inequality():
    watched = equal_treatment()
    worst = worst_group(watched, WindowStats(8, 8.0, 0.0), {"a": WindowStats(8, 8.0, 0.0)})
    assert watched.value(worst) == 1.0


def test_an_equal_treatment_observation_needs_a_group_that_is_no_identity_code():
    watched = equal_treatment()
    plain = new_observation("o1", PROVIDER, "c", TODAY, TODAY, today=TODAY, value=1.0)
    with pytest.raises(InvalidArgument) as error:
        watched.check(plain)
    assert fields_of(error) == ["observation.group"]
    with pytest.raises(InvalidArgument) as error:
        new_observation("o1", PROVIDER, "c", TODAY, TODAY, today=TODAY, value=1.0, group="010101-123N")
    assert fields_of(error) == ["observation.group"]
    grouped = new_observation("o1", PROVIDER, "c", TODAY, TODAY, today=TODAY, value=0.5, group="a")
    with pytest.raises(InvalidArgument) as error:
        watched.check(grouped)
    assert fields_of(error) == ["observation.value"]
