"""Configuration: TOML defaults, overridden by environment variables.

`config/defaults.toml` holds every default, including each policy number of
RULES.md; `RESCENTER_<SECTION>__<KEY>` overrides any of them. A bad value stops
the start with a message that names the key (`SettingsError`).
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import (
    SettingsError as PydanticSettingsError,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "defaults.toml"
DEV_SECRET = "dev-secret-change-me-in-production-0123456789"
DEV_BUS_USER = "guest"  # RabbitMQ's default user, allowed everything by the development defaults


def _iso_8601_only(value: object) -> object:
    """Durations are written in ISO 8601 (P3D, PT48H). A bare number would be read as
    seconds (`auto_complete_after = 3`: three seconds) and "3 days" parses only by
    luck ("3 weeks" does not): both are refused."""
    if isinstance(value, str | int | float) and not str(value).strip().lstrip("+-").upper().startswith("P"):
        raise ValueError("expected an ISO 8601 duration such as P3D, PT48H or PT0.5S")
    return value


def _above_zero(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero, e.g. P3D or PT0.5S (a negative window would close "
                         "before it opened)")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative (PT0S: none at all)")
    return value


#: a window or an interval: more than nothing
Duration = Annotated[timedelta, BeforeValidator(_iso_8601_only), AfterValidator(_above_zero)]
#: a delay or a threshold, where none at all is a meaningful choice
NonNegativeDuration = Annotated[timedelta, BeforeValidator(_iso_8601_only), AfterValidator(_not_negative)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSettings(_Section):
    environment: Literal["development", "test", "production"] = "development"
    instance_id: str = ""

    @property
    def instance(self) -> str:
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(65536, gt=0)


#: whom a command's `data.actor` may stand for (`core.messages.Actor.role`)
ActorRole = Literal["buyer", "seller", "support", "admin", "service", "system"]
#: an AMQP topic pattern, as in a binding: words joined by dots, `*` one word, `#` any number
TopicPattern = Annotated[str, Field(pattern=r"^(\*|#|[a-z0-9_]+)(\.(\*|#|[a-z0-9_]+))*$")]


class BusSender(_Section):
    """What one broker user may send to rescenter."""

    types: list[TopicPattern] = Field(min_length=1)
    roles: list[ActorRole] = []


class BusAuthorization(_Section):
    """Who may send the messages rescenter consumes from other services (commands, facts).

    The sender is the AMQP `user_id` property, which RabbitMQ checks against the user of the
    publishing connection. rescenter's own broker user (the user of `bus.url`) may send
    everything: the resolution center's agreements reach the core that way."""

    require_user_id: bool = False
    users: dict[str, BusSender] = {}
    service_user: str = ""  # rescenter's own broker user; "" = the user named in bus.url


class BusSettings(_Section):
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: the members of a RabbitMQ cluster, tried in turn: a connection lost or refused moves to the
    #: next one (`core.bus.ClusterConnection`); empty = `url` alone
    urls: list[str] = []
    exchange: str = Field("rescenter.events", min_length=1)
    queue_prefix: str = Field("rescenter", min_length=1)
    prefetch: int = Field(64, ge=1, le=65535)
    delivery_limit: int = Field(5, ge=1)
    retry_delay: NonNegativeDuration = timedelta(seconds=0.2)
    shutdown_grace: NonNegativeDuration = timedelta(seconds=10)
    unrouted_max_length: int = Field(100_000, ge=1)
    authorization: BusAuthorization = BusAuthorization()

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every broker address the service may connect to, in the order it tries them."""
        return tuple(self.urls) or (self.url,)

    @model_validator(mode="after")
    def _one_user_for_every_member(self) -> BusSettings:
        # What rescenter publishes carries its broker user in user_id, which the broker checks.
        users = {_amqp_user(url) for url in self.addresses}
        if len(users) > 1:
            raise ValueError(f"bus.urls name different broker users ({', '.join(sorted(users))}): "
                             "every member must be reached as the same user")
        return self


def _amqp_user(url: str) -> str:
    return unquote(urlsplit(url).username or "") or "guest"


class StoreSettings(_Section):
    url: str = "mongodb://127.0.0.1:27017/"
    database: str = Field("rescenter", min_length=1)


class AuthSettings(_Section):
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"] = "HS256"
    secret: str = Field(DEV_SECRET, min_length=32)
    audience: str = "rescenter"
    issuer: str = ""


class ClockSettings(_Section):
    mode: Literal["system", "test"] = "system"


class SchedulerSettings(_Section):
    poll_interval: Duration = timedelta(seconds=0.5)
    scan_interval: Duration = timedelta(seconds=5)
    lease: Duration = timedelta(seconds=30)
    retention: Duration = Field(timedelta(days=30), gt=timedelta(0))  # real time, finished deadlines
    prune_interval: Duration = Field(timedelta(minutes=10), gt=timedelta(0))


class OutboxSettings(_Section):
    sweep_interval: Duration = Field(timedelta(seconds=5), gt=timedelta(0))
    lease: Duration = Field(timedelta(seconds=5), gt=timedelta(0))
    full_sweep_interval: Duration = Field(timedelta(minutes=1), gt=timedelta(0))


class IdempotencySettings(_Section):
    """`Idempotency-Key` records (core.http.idempotency); times on the real clock."""

    expire_after: Duration = Field(timedelta(hours=24), gt=timedelta(0))
    in_progress_lease: Duration = Field(timedelta(minutes=1), gt=timedelta(0))
    prune_interval: Duration = Field(timedelta(minutes=10), gt=timedelta(0))


class PluginSettings(_Section):
    enabled: list[str] = ["disputes", "reviews", "availability", "blocking", "metrics"]
    extra: list[str] = []
    poll_interval: Duration = timedelta(seconds=1)


Silence = Literal["accept", "decline", "record_unanswered"]


class OrderPolicy(_Section):
    auto_complete_after: Duration = timedelta(days=3)  # ORD-4


class DisputePolicy(_Section):
    max_partial_refund_percent: int = Field(60, gt=0, le=100)  # DSP-2
    seller_cancel_request_window: Duration = timedelta(hours=48)  # DSP-4
    seller_cancel_request_silence: Silence = "accept"
    update_request_window: Duration = timedelta(hours=48)  # DSP-5
    update_request_silence: Silence = "record_unanswered"
    buyer_cancel_request_window: Duration = timedelta(hours=48)  # DSP-6
    buyer_cancel_request_silence: Silence = "accept"
    extension_request_window: Duration = timedelta(days=2)  # DSP-7
    extension_request_silence: Silence = "accept"
    extra_offer_window: Duration = timedelta(days=2)  # DSP-8
    extra_offer_silence: Silence = "decline"


class ReviewPolicy(_Section):
    late_threshold: NonNegativeDuration = timedelta(hours=24)  # REV-1
    unanswered_threshold: NonNegativeDuration = timedelta(hours=24)  # REV-1
    min_completed_orders: int = Field(1, ge=0)  # REV-2
    review_window: Duration = timedelta(days=5)  # REV-4


class SuccessScoreWeights(_Section):  # MET-4
    completion_rate: float = Field(0.4, ge=0)
    on_time_delivery: float = Field(0.3, ge=0)
    answers_within_deadline: float = Field(0.15, ge=0)
    review_rating: float = Field(0.15, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> SuccessScoreWeights:
        if not any(self.model_dump().values()):
            raise ValueError("every weight is 0: the success score would have nothing to weigh")
        return self


class MetricsPolicy(_Section):
    completion_window: Duration = timedelta(days=60)  # MET-1
    mutual_cancel_reorder_window: NonNegativeDuration = timedelta(days=14)  # MET-2
    success_score_weights: SuccessScoreWeights = SuccessScoreWeights()


class Policy(_Section):
    orders: OrderPolicy = OrderPolicy()
    disputes: DisputePolicy = DisputePolicy()
    reviews: ReviewPolicy = ReviewPolicy()
    metrics: MetricsPolicy = MetricsPolicy()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RESCENTER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    service: ServiceSettings = ServiceSettings()
    http: HttpSettings = HttpSettings()
    bus: BusSettings = BusSettings()
    store: StoreSettings = StoreSettings()
    auth: AuthSettings = AuthSettings()
    clock: ClockSettings = ClockSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    outbox: OutboxSettings = OutboxSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    plugins: PluginSettings = PluginSettings()
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _production_guards(self) -> Settings:
        if self.service.environment == "production":
            if self.clock.mode == "test":
                raise ValueError("clock.mode 'test' is refused when service.environment is 'production'")
            if self.auth.secret == DEV_SECRET:
                raise ValueError("auth.secret must be set (the development secret is refused in production)")
            authorization = self.bus.authorization
            if not authorization.require_user_id:
                raise ValueError("bus.authorization.require_user_id must be true in production: "
                                 "a command without a user_id would be applied unchecked")
            if not authorization.users:
                raise ValueError("bus.authorization.users is empty: in production name the broker user of "
                                 "each service that sends commands, with its types and roles")
            if DEV_BUS_USER in authorization.users:
                raise ValueError(f"bus.authorization.users.{DEV_BUS_USER} is the development default and is "
                                 "refused in production: give each service a broker user of its own")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("RESCENTER_CONFIG") or DEFAULT_CONFIG
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))


class SettingsError(Exception):
    """The configuration cannot be used; the message names every bad key."""


def load_settings(**overrides: object) -> Settings:
    """Read the TOML file and the environment; raise SettingsError naming bad keys."""
    # The conventional variables, so that one MONGODB_URL points every tool at the same server.
    shorthands = {"MONGODB_URL": ("RESCENTER_STORE__URL", "store"), "RABBITMQ_URL": ("RESCENTER_BUS__URL", "bus")}
    for short, (full, section) in shorthands.items():
        if os.environ.get(short) and not os.environ.get(full) and section not in overrides:
            # Sources are deep-merged: this sets the url and keeps the section's other keys.
            overrides[section] = {"url": os.environ[short]}
    config_file = os.environ.get("RESCENTER_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise SettingsError(f"RESCENTER_CONFIG: no such file {config_file!r}")
    _refuse_unknown_sections(os.environ)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            shown = _shown(key, error.get("input"))
            lines.append(f"  {key + ': ' if key else ''}{error['msg']}{f' (got {shown})' if shown else ''}")
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{config_file or DEFAULT_CONFIG}: not valid TOML: {exc}") from None
    except PydanticSettingsError as exc:  # a list or table in a variable that is not JSON
        section = str(exc).split('"')[1] if '"' in str(exc) else "?"
        names = sorted(name for name in os.environ if name.startswith(f"RESCENTER_{section.upper()}__"))
        raise SettingsError(
            f"{', '.join(names) or 'RESCENTER_' + section.upper()}: a list or a table in a variable is written "
            f"as JSON, e.g. RESCENTER_PLUGINS__ENABLED='[\"disputes\", \"reviews\"]'") from None


SECRET_WORDS = ("secret", "password", "token")


def redact(value: str) -> str:
    """A URL without its password (amqp://user:***@host): safe to print or log."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    return value.replace(f":{parts.password}@", ":***@", 1)


def printable(settings: Settings) -> str:
    """The settings as `rescenter check-config` prints them: no secret, no password in a URL."""
    shown = settings.model_dump(mode="json", exclude={"auth": {"secret"}})
    shown["bus"]["url"] = redact(shown["bus"]["url"])
    shown["bus"]["urls"] = [redact(url) for url in shown["bus"]["urls"]]
    shown["store"]["url"] = redact(shown["store"]["url"])
    return json.dumps(shown, indent=2)


def _shown(key: str, value: object) -> str | None:
    """The refused value, when printing it tells the operator something and gives nothing
    away: never a whole section (it would hold the secrets), nor a secret, nor a password."""
    if not key or isinstance(value, dict | list) or any(word in key.lower() for word in SECRET_WORDS):
        return None
    if isinstance(value, str) and "://" in value:
        return repr(redact(value))
    return repr(value)


def _refuse_unknown_sections(environ: os._Environ[str] | dict[str, str]) -> None:
    """`RESCENTER_POLCY__ORDERS__...` would be ignored without a word: a nested variable must
    name a section. (A variable without `__` may belong to the tools: RESCENTER_URL, ...)"""
    sections = set(Settings.model_fields)
    unknown = sorted(name for name in environ if name.startswith("RESCENTER_") and "__" in name
                     and name.removeprefix("RESCENTER_").split("__")[0].lower() not in sections)
    if unknown:
        raise SettingsError(f"{', '.join(unknown)}: no such section; the sections are "
                            f"{', '.join(sorted(sections))} (RESCENTER_<SECTION>__<KEY>)")
