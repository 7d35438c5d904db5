"""RetryPolicy, OutlierDetection and HealthCheck (CONTRACT sections 4 and 5): documented defaults, validation
of every field with a ValueError that names the field and the bad value, and ``coerce``."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from lbclient._core import HealthCheck, OutlierDetection, RetryPolicy
from lbclient._core._config import DEFAULT_RETRY_STATUSES, IDEMPOTENT_METHODS

NOT_NUMBERS: list[Any] = ["1", None, True, False, [1], math.nan, math.inf, -math.inf, 1j]


def bad(field: str, value: Any) -> Any:
    """``pytest.raises`` for a ValueError that names both ``field`` and ``value``."""
    return pytest.raises(ValueError, match=rf"{re.escape(field)}.*{re.escape(repr(value))}")


# -- defaults ---------------------------------------------------------------------------------------------------------


def test_retry_policy_defaults_are_the_documented_anchors() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.backoff_base == 0.025
    assert policy.backoff_max == 0.25
    assert policy.retry_on_status == frozenset({502, 503, 504})
    assert isinstance(policy.retry_on_status, frozenset)
    assert policy.budget_ratio == 0.2
    assert policy.budget_min_retries == 10.0
    assert policy.budget_window == 10.0
    assert policy.retry_non_idempotent is False
    assert policy.per_try_timeout is None
    assert policy.retry_after_max > 0
    assert frozenset({502, 503, 504}) == DEFAULT_RETRY_STATUSES
    assert frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}) == IDEMPOTENT_METHODS


def test_outlier_detection_defaults_are_the_documented_anchors() -> None:
    config = OutlierDetection()
    assert config.consecutive_failures == 5
    assert config.base_ejection_time == 30.0
    assert config.max_ejection_time == 300.0
    assert config.max_ejection_percent == 10.0  # Envoy's
    assert config.jitter >= 0
    # Envoy's success-rate detector; the former "any 5xx in a row" rule is off.
    assert config.success_rate_interval == 10.0
    assert config.success_rate_minimum_hosts == 5
    assert config.success_rate_request_volume == 100
    assert config.success_rate_stdev_factor == 1.9
    assert config.consecutive_5xx is None


def test_health_check_defaults_are_the_documented_anchors() -> None:
    config = HealthCheck()
    assert config.path == "/health"
    assert config.healthy_threshold == 2
    assert config.unhealthy_threshold == 3
    assert config.interval > 0
    assert config.timeout > 0
    assert config.jitter >= 0


@pytest.mark.parametrize("config", [RetryPolicy(), OutlierDetection(), HealthCheck()])
def test_configs_are_frozen(config: Any) -> None:
    field = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, getattr(config, field))


def test_configs_compare_and_hash_by_value() -> None:
    assert RetryPolicy(retry_on_status=[503, 502, 503]) == RetryPolicy(retry_on_status={502, 503})
    assert hash(RetryPolicy(retry_on_status=(502,))) == hash(RetryPolicy(retry_on_status={502}))
    assert OutlierDetection(consecutive_failures=2) == OutlierDetection(consecutive_failures=2)
    assert HealthCheck(path="/x") != HealthCheck(path="/y")


# -- RetryPolicy validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, "3", None, True, False, math.nan])
def test_retry_policy_rejects_bad_max_attempts(value: Any) -> None:
    with bad("max_attempts", value):
        RetryPolicy(max_attempts=value)


@pytest.mark.parametrize(
    "field", ["backoff_base", "backoff_max", "retry_after_max", "budget_ratio", "budget_min_retries"]
)
@pytest.mark.parametrize("value", [-0.001, -1, *NOT_NUMBERS])
def test_retry_policy_rejects_bad_non_negative_numbers(field: str, value: Any) -> None:
    with bad(field, value):
        RetryPolicy(**{field: value})


@pytest.mark.parametrize("value", [0, 0.0, -1, *NOT_NUMBERS])
def test_retry_policy_rejects_bad_budget_window(value: Any) -> None:
    with bad("budget_window", value):
        RetryPolicy(budget_window=value)


@pytest.mark.parametrize("value", [0, 0.0, -0.5, "1", True, False, math.nan, math.inf])
def test_retry_policy_rejects_bad_per_try_timeout(value: Any) -> None:
    with bad("per_try_timeout", value):
        RetryPolicy(per_try_timeout=value)


@pytest.mark.parametrize(
    ("statuses", "culprit"),
    [
        ([700], 700),
        ([503, 700], 700),
        (["503"], "503"),
        ([99], 99),
        ([600], 600),
        ([0], 0),
        ([-503], -503),
        ([True], True),
        ([503.0], 503.0),
        ([None], None),
        ("503", "503"),
        (b"503", b"503"),
        (503, 503),
        (None, None),
    ],
)
def test_retry_policy_rejects_bad_statuses(statuses: Any, culprit: Any) -> None:
    with bad("retry_on_status", culprit):
        RetryPolicy(retry_on_status=statuses)


@pytest.mark.parametrize("value", [1, 0, "yes", None, "False"])
def test_retry_policy_rejects_non_bool_retry_non_idempotent(value: Any) -> None:
    with bad("retry_non_idempotent", value):
        RetryPolicy(retry_non_idempotent=value)


def test_retry_policy_accepts_boundary_values() -> None:
    policy = RetryPolicy(
        max_attempts=1,
        backoff_base=0,
        backoff_max=0.0,
        retry_after_max=0,
        budget_ratio=0,
        budget_min_retries=0,
        budget_window=0.001,
        per_try_timeout=0.001,
        retry_on_status=[100, 599, 429],
        retry_non_idempotent=True,
    )
    assert policy.retry_on_status == frozenset({100, 599, 429})
    assert RetryPolicy(retry_on_status=()).retry_on_status == frozenset()
    assert RetryPolicy(retry_on_status=(s for s in (500, 502))).retry_on_status == frozenset({500, 502})


# -- OutlierDetection validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -3, 2.5, 5.0, "5", None, True, False])
def test_outlier_detection_rejects_bad_consecutive_failures(value: Any) -> None:
    with bad("consecutive_failures", value):
        OutlierDetection(consecutive_failures=value)


@pytest.mark.parametrize("value", [-0.1, -30, *NOT_NUMBERS])
def test_outlier_detection_rejects_bad_base_ejection_time(value: Any) -> None:
    with bad("base_ejection_time", value):
        OutlierDetection(base_ejection_time=value)


@pytest.mark.parametrize("value", [-0.1, -300, *NOT_NUMBERS])
def test_outlier_detection_rejects_bad_max_ejection_time(value: Any) -> None:
    with bad("max_ejection_time", value):
        OutlierDetection(max_ejection_time=value)


@pytest.mark.parametrize("value", [-1, -0.01, 100.01, 101, 1000, *NOT_NUMBERS])
def test_outlier_detection_rejects_bad_max_ejection_percent(value: Any) -> None:
    with bad("max_ejection_percent", value):
        OutlierDetection(max_ejection_percent=value)


@pytest.mark.parametrize("value", [-0.1, *NOT_NUMBERS])
def test_outlier_detection_rejects_bad_jitter(value: Any) -> None:
    with bad("jitter", value):
        OutlierDetection(jitter=value)


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("success_rate_interval", [0, -1, "10", True, math.nan, math.inf]),
        ("success_rate_minimum_hosts", [1, 0, -5, 2.5, "5", None, True]),
        ("success_rate_request_volume", [0, -1, 1.5, "100", None, False]),
        ("success_rate_stdev_factor", [-0.1, *NOT_NUMBERS]),
        ("consecutive_5xx", [0, -1, 2.5, "5", True]),
    ],
)
def test_outlier_detection_rejects_bad_success_rate_and_5xx_fields(field: str, values: list[Any]) -> None:
    for value in values:
        with bad(field, value):
            OutlierDetection(**{field: value})


def test_outlier_detection_turns_detectors_off_with_none() -> None:
    config = OutlierDetection(success_rate_interval=None, consecutive_5xx=None)
    assert (config.success_rate_interval, config.consecutive_5xx) == (None, None)
    assert OutlierDetection(consecutive_5xx=1).consecutive_5xx == 1


def test_outlier_detection_rejects_max_below_base() -> None:
    with pytest.raises(ValueError, match=r"max_ejection_time 29\.5.*base_ejection_time 30\.0"):
        OutlierDetection(base_ejection_time=30.0, max_ejection_time=29.5)
    with pytest.raises(ValueError, match=r"max_ejection_time"):
        OutlierDetection(base_ejection_time=400.0)  # above the default max of 300


def test_outlier_detection_accepts_boundary_values() -> None:
    config = OutlierDetection(
        consecutive_failures=1, base_ejection_time=0, max_ejection_time=0, max_ejection_percent=0, jitter=0
    )
    assert config.max_ejection_time == config.base_ejection_time == 0
    assert (
        OutlierDetection(base_ejection_time=7.0, max_ejection_time=7.0, max_ejection_percent=100).max_ejection_time
        == 7.0
    )


# -- HealthCheck validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["health", "", " /health", "http://a/health", None, b"/health", 1, ["/health"]])
def test_health_check_rejects_bad_path(value: Any) -> None:
    with bad("path", value):
        HealthCheck(path=value)


@pytest.mark.parametrize("field", ["interval", "timeout"])
@pytest.mark.parametrize("value", [0, 0.0, -1, *NOT_NUMBERS])
def test_health_check_rejects_bad_positive_numbers(field: str, value: Any) -> None:
    with bad(field, value):
        HealthCheck(**{field: value})


@pytest.mark.parametrize("value", [-0.01, *NOT_NUMBERS])
def test_health_check_rejects_bad_jitter(value: Any) -> None:
    with bad("jitter", value):
        HealthCheck(jitter=value)


@pytest.mark.parametrize("field", ["healthy_threshold", "unhealthy_threshold"])
@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, "2", None, True, False])
def test_health_check_rejects_bad_thresholds(field: str, value: Any) -> None:
    with bad(field, value):
        HealthCheck(**{field: value})


def test_health_check_accepts_boundary_values() -> None:
    config = HealthCheck(path="/", interval=0.001, timeout=0.001, jitter=0, healthy_threshold=1, unhealthy_threshold=1)
    assert config.path == "/"
    assert HealthCheck(path="/ready?deep=1").path == "/ready?deep=1"


# -- coerce -----------------------------------------------------------------------------------------------------------


def test_retry_policy_coerce() -> None:
    assert RetryPolicy.coerce(5) == RetryPolicy(max_attempts=5)
    assert RetryPolicy.coerce(1).max_attempts == 1
    assert RetryPolicy.coerce(None) == RetryPolicy(max_attempts=1)
    policy = RetryPolicy(max_attempts=7, backoff_base=0.5, backoff_max=1.0)
    assert RetryPolicy.coerce(policy) is policy
    # an int keeps every other default
    assert dataclasses.replace(RetryPolicy.coerce(4), max_attempts=3) == RetryPolicy()


@pytest.mark.parametrize("value", [True, False, 2.0, "3", object(), [3], OutlierDetection()])
def test_retry_policy_coerce_rejects_other_values(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"retries.*{re.escape(repr(value))}"):
        RetryPolicy.coerce(value)


@pytest.mark.parametrize("value", [0, -1])
def test_retry_policy_coerce_validates_the_int(value: int) -> None:
    with bad("max_attempts", value):
        RetryPolicy.coerce(value)


@pytest.mark.parametrize("cls", [OutlierDetection, HealthCheck])
def test_health_configs_coerce(cls: Any) -> None:
    assert cls.coerce(True) == cls()
    assert cls.coerce(None) is None
    assert cls.coerce(False) is None
    config = cls(jitter=0.5)
    assert cls.coerce(config) is config


@pytest.mark.parametrize("cls", [OutlierDetection, HealthCheck])
@pytest.mark.parametrize("value", [1, 0, 5, "yes", object(), {"jitter": 0.5}, RetryPolicy()])
def test_health_configs_coerce_rejects_other_values(cls: Any, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        cls.coerce(value)


def test_health_configs_coerce_rejects_each_other() -> None:
    with pytest.raises(ValueError, match="outlier_detection"):
        OutlierDetection.coerce(HealthCheck())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="health_check"):
        HealthCheck.coerce(OutlierDetection())  # type: ignore[arg-type]
