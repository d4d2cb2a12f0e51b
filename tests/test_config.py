"""Configuration: TOML defaults, environment overrides, errors that name the key,
production guards, and every policy number of RULES.md kept in config/defaults.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.settings import DEFAULT_CONFIG, DEV_SECRET, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
A_REAL_SECRET = "a-production-secret-that-is-long-enough-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults file alone, and leaves the environment as it found it."""
    for name in list(os.environ):
        if name.startswith("RESCENTER_") or name in ("MONGODB_URL", "RABBITMQ_URL"):
            monkeypatch.delenv(name)
    # load_settings() copies the shorthands into RESCENTER_* variables of this process: make
    # monkeypatch remember them as absent so that they are removed again after the test.
    for name in ("RESCENTER_STORE__URL", "RESCENTER_BUS__URL"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _key(path: str, table: dict[str, Any]) -> Any:
    for part in path.split("."):
        table = table[part]
    return table


def test_defaults_load_from_the_toml_file() -> None:
    settings = load_settings()
    assert settings.service.environment == "development"
    assert settings.bus.prefetch == 64
    assert settings.bus.retry_delay == timedelta(seconds=0.2)
    assert settings.http.max_body_bytes == 65536
    assert settings.auth.algorithm == "HS256"
    assert settings.clock.mode == "system"
    assert settings.plugins.enabled == ["disputes", "reviews", "availability", "blocking", "metrics"]
    assert settings.policy.orders.auto_complete_after == timedelta(days=3)


def test_an_environment_variable_overrides_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCENTER_BUS__PREFETCH", "7")
    monkeypatch.setenv("RESCENTER_POLICY__DISPUTES__BUYER_CANCEL_REQUEST_WINDOW", "PT72H")
    settings = load_settings()
    assert settings.bus.prefetch == 7
    assert settings.policy.disputes.buyer_cancel_request_window == timedelta(hours=72)
    # the neighbours keep their defaults
    assert settings.bus.delivery_limit == 5
    assert settings.policy.disputes.seller_cancel_request_window == timedelta(hours=48)


def test_MONGODB_URL_and_RABBITMQ_URL_shorthands_set_store_and_bus_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGODB_URL", "mongodb://db.example:27018/")
    monkeypatch.setenv("RABBITMQ_URL", "amqp://u:p@mq.example:5673/")
    settings = load_settings()
    assert settings.store.url == "mongodb://db.example:27018/"
    assert settings.bus.url == "amqp://u:p@mq.example:5673/"


def test_bus_urls_name_the_members_of_a_cluster_reached_as_one_user(monkeypatch: pytest.MonkeyPatch) -> None:
    members = ["amqp://svc:p@mq-1:5672/", "amqp://svc:p@mq-2:5672/", "amqp://svc:p@mq-3:5672/"]
    monkeypatch.setenv("RESCENTER_BUS__URLS", json.dumps(members))
    assert load_settings().bus.addresses == tuple(members)
    monkeypatch.delenv("RESCENTER_BUS__URLS")
    assert load_settings().bus.addresses == (load_settings().bus.url,)
    monkeypatch.setenv("RESCENTER_BUS__URLS", json.dumps([*members[:2], "amqp://other:p@mq-3:5672/"]))
    with pytest.raises(SettingsError, match="bus.urls name different broker users"):
        load_settings()


def test_the_full_variable_wins_over_the_MONGODB_URL_shorthand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGODB_URL", "mongodb://short.example/")
    monkeypatch.setenv("RESCENTER_STORE__URL", "mongodb://full.example/")
    assert load_settings().store.url == "mongodb://full.example/"


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("RESCENTER_BUS__PREFETCH", "abc", "bus.prefetch"),
        ("RESCENTER_BUS__PREFETCH", "0", "bus.prefetch"),
        ("RESCENTER_POLICY__ORDERS__AUTO_COMPLETE_AFTER", "3 days", "policy.orders.auto_complete_after"),
        ("RESCENTER_POLICY__DISPUTES__MAX_PARTIAL_REFUND_PERCENT", "160", "policy.disputes.max_partial_refund_percent"),
        ("RESCENTER_CLOCK__MODE", "sundial", "clock.mode"),
    ],
)
def test_a_bad_value_raises_SettingsError_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert key in str(caught.value)
    assert repr(value) in str(caught.value)


def test_a_duration_given_as_a_bare_number_is_refused_not_read_as_seconds(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "rescenter.toml"
    config.write_text(DEFAULT_CONFIG.read_text().replace('auto_complete_after = "P3D"', "auto_complete_after = 3"))
    monkeypatch.setenv("RESCENTER_CONFIG", str(config))
    with pytest.raises(SettingsError, match="policy.orders.auto_complete_after"):
        load_settings()


def test_a_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESCENTER_CONFIG", str(tmp_path / "nowhere.toml"))
    with pytest.raises(SettingsError, match="nowhere.toml"):
        load_settings()


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESCENTER_")}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_check_config_with_a_bad_value_exits_2_and_names_the_key_on_stderr() -> None:
    result = _cli("check-config", RESCENTER_BUS__PREFETCH="abc")
    assert result.returncode == 2, result
    assert "bus.prefetch" in result.stderr
    assert result.stdout == ""


def test_check_config_prints_the_configuration_without_the_secret() -> None:
    result = _cli("check-config", RESCENTER_BUS__PREFETCH="7")
    assert result.returncode == 0, result.stderr
    assert '"prefetch": 7' in result.stdout
    assert DEV_SECRET not in result.stdout


def test_a_refused_configuration_never_prints_a_secret_or_a_password() -> None:
    """The errors name the key; the value only when it tells something and gives nothing away."""
    secret, password = "TOPSECRET-" + "x" * 40, "Sup3rPass"
    result = _cli("check-config", RESCENTER_SERVICE__ENVIRONMENT="production", RESCENTER_AUTH__SECRET=secret,
                  RABBITMQ_URL=f"amqp://svc:{password}@mq/")
    assert result.returncode == 2 and "require_user_id" in result.stderr, result
    short = _cli("check-config", RESCENTER_AUTH__SECRET="short-and-known")
    assert short.returncode == 2 and "auth.secret" in short.stderr and "short-and-known" not in short.stderr
    bad_url = _cli("check-config", RESCENTER_BUS__URL=f"amqp://svc:{password}@mq/", RESCENTER_BUS__PREFETCH="0")
    printed = _cli("check-config", RESCENTER_BUS__URL=f"amqp://svc:{password}@mq/")
    assert printed.returncode == 0 and "amqp://svc:***@mq/" in printed.stdout
    for output in (result.stderr, bad_url.stderr, printed.stdout):
        assert secret not in output and password not in output


@pytest.mark.parametrize(("env", "words"), [
    ({"RESCENTER_POLICY__ORDERS__AUTO_COMPLETE_AFTER": "-P3D"}, "policy.orders.auto_complete_after"),
    ({"RESCENTER_POLICY__DISPUTES__UPDATE_REQUEST_WINDOW": "PT0S"}, "update_request_window"),
    ({"RESCENTER_SCHEDULER__POLL_INTERVAL": "PT0S"}, "scheduler.poll_interval"),
    ({"RESCENTER_BUS__RETRY_DELAY": "-PT1S"}, "bus.retry_delay"),
    ({"RESCENTER_POLICY__METRICS__SUCCESS_SCORE_WEIGHTS": json.dumps(
        {"completion_rate": 0, "on_time_delivery": 0, "answers_within_deadline": 0, "review_rating": 0})},
     "every weight is 0"),
    ({"RESCENTER_POLCY__ORDERS__AUTO_COMPLETE_AFTER": "P5D"}, "RESCENTER_POLCY__ORDERS__AUTO_COMPLETE_AFTER"),
    ({"RESCENTER_PLUGINS__ENABLED": "disputes,reviews"}, "written as JSON"),
])
def test_a_value_that_cannot_work_is_refused_with_exit_2_naming_it(env: dict[str, str], words: str) -> None:
    """A negative window, a zero interval, weights that weigh nothing, a misspelt section or a
    list not written as JSON: each stops the start with a message, never a traceback."""
    result = _cli("check-config", **env)
    assert result.returncode == 2 and words in result.stderr, result
    assert "Traceback" not in result.stderr


def test_a_config_file_that_is_not_TOML_is_named_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[bus\nprefetch = 3\n")
    result = _cli("check-config", RESCENTER_CONFIG=str(broken))
    assert result.returncode == 2 and f"{broken}: not valid TOML" in result.stderr and "Traceback" not in result.stderr


def test_token_refuses_what_the_service_would_refuse() -> None:
    for args, words in ((("alice", "wizard"), "unknown role"), (("", "buyer"), "SUB"),
                        (("alice", "buyer", "--ttl", "-5"), "--ttl")):
        result = _cli("token", *args)
        assert result.returncode == 2 and words in result.stderr and result.stdout == "", (args, result)
    assert _cli("token", "alice", "buyer", "seller").returncode == 0


def test_production_refuses_the_test_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCENTER_SERVICE__ENVIRONMENT", "production")
    monkeypatch.setenv("RESCENTER_AUTH__SECRET", A_REAL_SECRET)
    monkeypatch.setenv("RESCENTER_CLOCK__MODE", "test")
    with pytest.raises(SettingsError, match="clock.mode"):
        load_settings()


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCENTER_SERVICE__ENVIRONMENT", "production")
    with pytest.raises(SettingsError, match="auth.secret"):
        load_settings()


PAYMENTS_ONLY = """
[bus.authorization.users.payments]
types = ["payment.chargeback_reported"]
"""


def _production_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users: str = PAYMENTS_ONLY) -> None:
    """defaults.toml with a bus authorization map of production: user ids required, `users`
    in place of the development guest entry (a file of one's own: TOML tables merge)."""
    text = DEFAULT_CONFIG.read_text()
    start = text.index("[bus.authorization.users.guest]")
    end = text.index("\n[", start)
    text = text[:start] + users.strip() + "\n" + text[end:]
    assert "require_user_id = false" in text
    config = tmp_path / "production.toml"
    config.write_text(text.replace("require_user_id = false", "require_user_id = true"))
    monkeypatch.setenv("RESCENTER_CONFIG", str(config))
    monkeypatch.setenv("RESCENTER_SERVICE__ENVIRONMENT", "production")
    monkeypatch.setenv("RESCENTER_AUTH__SECRET", A_REAL_SECRET)


def test_production_starts_with_a_real_secret_the_system_clock_and_a_bus_authorization_map(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _production_config(tmp_path, monkeypatch)
    settings = load_settings()
    assert settings.service.environment == "production" and settings.clock.mode == "system"
    authorization = settings.bus.authorization
    assert authorization.require_user_id is True
    assert {name: (user.types, user.roles) for name, user in authorization.users.items()} == {
        "payments": (["payment.chargeback_reported"], [])}


def test_development_lets_guest_send_every_command_as_any_role_and_takes_one_without_user_id() -> None:
    authorization = load_settings().bus.authorization
    assert authorization.require_user_id is False
    assert authorization.users["guest"].types == ["#"]
    assert set(authorization.users["guest"].roles) == {"buyer", "seller", "support", "admin", "service", "system"}


def test_production_refuses_bus_commands_without_user_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _production_config(tmp_path, monkeypatch)
    monkeypatch.setenv("RESCENTER_BUS__AUTHORIZATION__REQUIRE_USER_ID", "false")
    with pytest.raises(SettingsError, match="bus.authorization.require_user_id must be true in production"):
        load_settings()


def test_production_refuses_an_empty_bus_authorization_map(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _production_config(tmp_path, monkeypatch, users="")
    with pytest.raises(SettingsError, match="bus.authorization.users is empty"):
        load_settings()


def test_production_refuses_the_development_guest_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCENTER_SERVICE__ENVIRONMENT", "production")
    monkeypatch.setenv("RESCENTER_AUTH__SECRET", A_REAL_SECRET)
    monkeypatch.setenv("RESCENTER_BUS__AUTHORIZATION__REQUIRE_USER_ID", "true")
    with pytest.raises(SettingsError, match="bus.authorization.users.guest is the development default"):
        load_settings()


@pytest.mark.parametrize(("users", "key"), [
    ('[bus.authorization.users.shop]\ntypes = ["command.order.*"]\nroles = ["god"]', "bus.authorization.users.shop.roles"),
    ('[bus.authorization.users.shop]\ntypes = ["command order"]', "bus.authorization.users.shop.types"),
    ('[bus.authorization.users.shop]\ntypes = []', "bus.authorization.users.shop.types"),
    ('[bus.authorization.users.shop]\nroles = ["buyer"]', "bus.authorization.users.shop.types"),
])
def test_a_bad_bus_authorization_entry_is_refused_naming_the_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, users: str, key: str) -> None:
    _production_config(tmp_path, monkeypatch, users=users)
    with pytest.raises(SettingsError, match=key.replace(".", "[.]")):
        load_settings()


# Each bold number of RULES.md, the key that holds it in config/defaults.toml, and its value.
POLICY_NUMBERS = [
    ("ORD-4", "policy.orders.auto_complete_after", "P3D", timedelta(days=3)),
    ("DSP-2", "policy.disputes.max_partial_refund_percent", 60, 60),
    ("DSP-4", "policy.disputes.seller_cancel_request_window", "PT48H", timedelta(hours=48)),
    ("DSP-5", "policy.disputes.update_request_window", "PT48H", timedelta(hours=48)),
    ("DSP-6", "policy.disputes.buyer_cancel_request_window", "PT48H", timedelta(hours=48)),
    ("DSP-7", "policy.disputes.extension_request_window", "P2D", timedelta(days=2)),
    ("REV-1", "policy.reviews.late_threshold", "PT24H", timedelta(hours=24)),
    ("REV-1", "policy.reviews.unanswered_threshold", "PT24H", timedelta(hours=24)),
    ("REV-2", "policy.reviews.min_completed_orders", 1, 1),
    ("REV-4", "policy.reviews.review_window", "P5D", timedelta(days=5)),
    ("MET-1", "policy.metrics.completion_window", "P60D", timedelta(days=60)),
    ("MET-2", "policy.metrics.mutual_cancel_reorder_window", "P14D", timedelta(days=14)),
]

# What silence does when a window ends (DSP-10), as RULES.md states it for each kind.
SILENCE_POLICIES = [
    ("DSP-4", "policy.disputes.seller_cancel_request_silence", "accept"),
    ("DSP-5", "policy.disputes.update_request_silence", "record_unanswered"),
    ("DSP-6", "policy.disputes.buyer_cancel_request_silence", "accept"),
    ("DSP-7", "policy.disputes.extension_request_silence", "accept"),
]


@pytest.mark.parametrize(("rule", "key", "written", "value"), POLICY_NUMBERS,
                         ids=[f"{r}-{k.rsplit('.', 1)[1]}" for r, k, _, _ in POLICY_NUMBERS])
def test_every_policy_number_of_RULES_md_is_a_key_of_defaults_toml(rule: str, key: str, written: Any,
                                                                  value: Any) -> None:
    toml = tomllib.loads(DEFAULT_CONFIG.read_text())
    assert _key(key, toml) == written, f"{rule}: {key}"
    assert _key(key, load_settings().model_dump()) == value, f"{rule}: {key}"


@pytest.mark.parametrize(("rule", "key", "silence"), SILENCE_POLICIES)
def test_DSP_10_silence_policies_are_keys_of_defaults_toml(rule: str, key: str, silence: str) -> None:
    toml = tomllib.loads(DEFAULT_CONFIG.read_text())
    assert _key(key, toml) == silence, f"{rule}: {key}"


def test_every_setting_has_its_key_in_defaults_toml() -> None:
    """Nothing is configurable only through a default hidden in the code."""
    toml = tomllib.loads(DEFAULT_CONFIG.read_text())

    def leaves(data: dict[str, Any], prefix: str = "") -> set[str]:
        keys = set()
        for name, value in data.items():
            if isinstance(value, dict):
                keys |= leaves(value, f"{prefix}{name}.")
            else:
                keys.add(f"{prefix}{name}")
        return keys

    assert leaves(load_settings().model_dump()) == leaves(toml)


def test_idempotency_keys_expire_after_24_hours_by_default_and_it_is_configurable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.idempotency.expire_after == timedelta(hours=24)
    assert settings.idempotency.in_progress_lease == timedelta(minutes=1)
    assert settings.idempotency.prune_interval == timedelta(minutes=10)
    monkeypatch.setenv("RESCENTER_IDEMPOTENCY__EXPIRE_AFTER", "PT48H")
    assert load_settings().idempotency.expire_after == timedelta(hours=48)
    monkeypatch.setenv("RESCENTER_IDEMPOTENCY__EXPIRE_AFTER", "PT0S")
    with pytest.raises(SettingsError, match="idempotency.expire_after"):
        load_settings()
