"""Server settings: one table that drives environment variables, CLI flags and docs.

Each :class:`Setting` names its environment variable, its ``serve`` flag, its
default and its meaning. A flag wins over the environment, which wins over the
default. ``broadcaster serve --help`` and the README's configuration table are
both generated from :data:`SETTINGS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .core.publishing import table_names
from .exceptions import ConfigurationError

__all__ = ["SETTINGS", "Setting", "Settings", "markdown_table"]

# The change log is a ring of 32 hourly partitions (schema/models.py, BUCKETS):
# a partition is emptied once its newest entry is an hour past the retention,
# and must be empty again before the ring comes back to it.
MAX_HISTORY_RETENTION = 29 * 3600.0

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_MAY_BE_ZERO = frozenset(
    {
        "port",
        "jwt_leeway",
        "authorizer_cache_seconds",
        "read_delay",
        "poll_window",
        "poll_min_rate",
    }
)


@dataclass(frozen=True)
class Settings:
    """Every setting of a server process, validated."""

    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    data_dir: str = ".broadcaster"
    publish: str | None = None
    max_message_bytes: int = 64 * 1024
    max_frame_bytes: int = 1024 * 1024
    max_subscriptions: int = 100
    max_buffer_bytes: int = 1024 * 1024
    close_timeout: float = 5.0
    keepalive_interval: float = 5.0
    keepalive_timeout: float = 5.0
    reconnect_max_delay: float = 10.0
    read_delay: float = 0.002
    poll_window: float = 1.0
    poll_interval: float = 0.005
    poll_min_rate: float = 100.0
    refresh_interval: float = 30.0
    history_retention: float = 24 * 3600.0
    max_catch_up: int = 10_000
    auth: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwks_url: str | None = None
    jwt_algorithms: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: float = 0.0
    table_ids_claim: str = "table_ids"
    authorizer: str | None = None
    authorizer_cache_seconds: float = 10.0
    auth_timeout: float = 5.0
    handshake_timeout: float = 10.0
    max_connections: int = 10_000
    max_messages_per_second: float = 50.0
    max_errors: int = 20
    allowed_origins: str | None = None
    publishable_keys: str | None = None

    def __post_init__(self) -> None:
        if self.auth not in (None, "jwt", "none"):
            raise ConfigurationError(f"{_named('auth')} must be jwt or none, not {self.auth!r}")
        if self.log_level not in _LOG_LEVELS:
            levels = ", ".join(_LOG_LEVELS)
            raise ConfigurationError(
                f"{_named('log_level')} must be one of {levels}, not {self.log_level!r}"
            )
        if self.port > 65535:
            raise ConfigurationError(
                f"{_named('port')} must be between 0 and 65535, not {self.port}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # Written as "not >" so that NaN is refused too.
            if isinstance(value, int | float) and field.name in _MAY_BE_ZERO:
                if not value >= 0:
                    raise ConfigurationError(f"{_named(field.name)} must be 0 or more, not {value}")
            elif isinstance(value, int | float) and not value > 0:
                raise ConfigurationError(f"{_named(field.name)} must be positive, not {value}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigurationError(f"{_named(field.name)} must be finite, not {value}")
        if self.history_retention > MAX_HISTORY_RETENTION:
            raise ConfigurationError(
                f"{_named('history_retention')} must be at most {MAX_HISTORY_RETENTION:.0f}"
                f" seconds (the change log's ring of hourly partitions),"
                f" not {self.history_retention}"
            )
        if self.publish is not None:
            try:
                table_names(self.publish)
            except ValueError as exc:
                raise ConfigurationError(f"{_named('publish')}: {exc}") from None
        if self.max_frame_bytes < self.max_message_bytes:
            raise ConfigurationError(
                f"{_named('max_frame_bytes')} must be at least {_named('max_message_bytes')}"
            )

    @property
    def tables_to_publish(self) -> tuple[str, ...]:
        """The table names of :attr:`publish`."""
        return () if self.publish is None else table_names(self.publish)

    @classmethod
    def load(
        cls, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from ``environ``, with ``overrides`` (CLI flags) on top."""
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = environ.get(setting.env)
            if raw is not None and raw != "":
                values[setting.name] = setting.parse(raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return cls(**values)


def _named(name: str) -> str:
    """A setting as the user wrote it: its field name and environment variable."""
    env = next(setting.env for setting in SETTINGS if setting.name == name)
    return f"{name} ({env})"


def _parser(kind: type) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return kind(raw)
        except ValueError:
            raise ConfigurationError(f"expected {kind.__name__}, got {raw!r}") from None

    return parse


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        return Settings.__dataclass_fields__[self.name].default

    @property
    def kind(self) -> type:
        default = self.default
        return str if default is None else type(default)

    def parse(self, raw: str) -> Any:
        try:
            return _parser(self.kind)(raw)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.env}: {exc}") from None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "database_url",
        "DATABASE_URL",
        "Postgres to serve, as a libpq URL. Unset: start an embedded Postgres in data_dir.",
    ),
    Setting("host", "BROADCASTER_HOST", "Address to listen on."),
    Setting("port", "BROADCASTER_PORT", "Port to listen on (0 picks a free one)."),
    Setting(
        "workers",
        "BROADCASTER_WORKERS",
        "Server processes sharing the port, each with its own LISTEN connection.",
    ),
    Setting("log_level", "BROADCASTER_LOG_LEVEL", "One of critical, error, warning, info, debug."),
    Setting(
        "data_dir",
        "BROADCASTER_DATA_DIR",
        "Where the embedded Postgres keeps its data (only without DATABASE_URL).",
    ),
    Setting(
        "publish",
        "BROADCASTER_PUBLISH",
        "Comma-separated tables whose changes are logged, published by broadcaster migrate "
        "(and serve on the embedded Postgres) as broadcaster publish does; never unpublishes "
        "(docs/publishing.md).",
    ),
    Setting(
        "max_message_bytes",
        "BROADCASTER_MAX_MESSAGE_BYTES",
        "Largest client message handled; a larger one gets a too_large error.",
    ),
    Setting(
        "max_frame_bytes",
        "BROADCASTER_MAX_FRAME_BYTES",
        "Largest client message read at all; a larger one closes the connection (1009).",
    ),
    Setting(
        "max_subscriptions",
        "BROADCASTER_MAX_SUBSCRIPTIONS",
        "Subscriptions one connection may hold.",
    ),
    Setting(
        "max_buffer_bytes",
        "BROADCASTER_MAX_BUFFER_BYTES",
        "Unsent bytes a client may have queued before it is closed as a slow consumer (4000).",
    ),
    Setting(
        "close_timeout",
        "BROADCASTER_CLOSE_TIMEOUT",
        "Seconds a closing client has to finish the closing handshake before it is cut off.",
    ),
    Setting(
        "keepalive_interval",
        "BROADCASTER_KEEPALIVE_INTERVAL",
        "Seconds between checks that the LISTEN connection is alive.",
    ),
    Setting(
        "keepalive_timeout",
        "BROADCASTER_KEEPALIVE_TIMEOUT",
        "Seconds a keepalive check may take before the LISTEN connection is declared dead.",
    ),
    Setting(
        "reconnect_max_delay",
        "BROADCASTER_RECONNECT_MAX_DELAY",
        "Cap, in seconds, of the exponential backoff between reconnection attempts.",
    ),
    Setting(
        "read_delay",
        "BROADCASTER_READ_DELAY",
        "Seconds to wait after a wake-up before reading, so commits arriving together "
        "are read and sent together (0: read at once).",
    ),
    Setting(
        "poll_window",
        "BROADCASTER_POLL_WINDOW",
        "Seconds this process promises to keep reading a busy table unasked, renewed while "
        "it stays busy; meanwhile its writers skip their NOTIFY, whose commit lock "
        "serialises them (0: writers always notify).",
    ),
    Setting(
        "poll_interval",
        "BROADCASTER_POLL_INTERVAL",
        "Seconds between reads of a table under a promise: the added delay of a change "
        "whose writer skipped its NOTIFY.",
    ),
    Setting(
        "poll_min_rate",
        "BROADCASTER_POLL_MIN_RATE",
        "Changes a second, over every table this process serves, from which it promises "
        "to poll busy tables; below it, writers notify and every read follows a wake-up, "
        "fewer reads than a poll every interval (0: promise at the first wake-up).",
    ),
    Setting(
        "refresh_interval",
        "BROADCASTER_REFRESH_INTERVAL",
        "Seconds between reads of every subscribed table, which advance idle clients' cursors; "
        "the change log is pruned every ten of them.",
    ),
    Setting(
        "history_retention",
        "BROADCASTER_HISTORY_RETENTION",
        "Seconds the change log keeps changes (at most 104400, 29 hours); a cursor older "
        "than that gets a reset.",
    ),
    Setting(
        "max_catch_up",
        "BROADCASTER_MAX_CATCH_UP",
        "Changes a resuming subscriber's catch-up may hold; a longer one is compacted to the "
        "latest change of each changed row.",
    ),
    Setting(
        "auth",
        "BROADCASTER_AUTH",
        "jwt (default with DATABASE_URL): clients must present a JWT; none: anyone may "
        "subscribe to any table (the default on the embedded Postgres, for local use).",
    ),
    Setting(
        "jwt_secret",
        "BROADCASTER_JWT_SECRET",
        "Shared secret for HS256/HS384/HS512 tokens.",
    ),
    Setting(
        "jwt_public_key",
        "BROADCASTER_JWT_PUBLIC_KEY",
        "PEM public key (RSA, EC P-256 or Ed25519) for RS256/ES256/EdDSA tokens, "
        "or @path to a file holding it.",
    ),
    Setting(
        "jwks_url",
        "BROADCASTER_JWKS_URL",
        "JWKS URL of an identity provider; cached, refetched on an unknown kid.",
    ),
    Setting(
        "jwt_algorithms",
        "BROADCASTER_JWT_ALGORITHMS",
        "Comma-separated allow-list of JWT algorithms (default: those the keys support).",
    ),
    Setting("jwt_issuer", "BROADCASTER_JWT_ISSUER", "Required iss claim, if set."),
    Setting("jwt_audience", "BROADCASTER_JWT_AUDIENCE", "Required aud claim, if set."),
    Setting(
        "jwt_leeway", "BROADCASTER_JWT_LEEWAY", "Seconds of clock skew allowed on exp and nbf."
    ),
    Setting(
        "table_ids_claim",
        "BROADCASTER_TABLE_IDS_CLAIM",
        'Claim listing the table_ids a token may subscribe to ("*" or ["*"]: all); '
        "a dotted path such as app_metadata.table_ids reaches into objects when no claim "
        "has that exact name.",
    ),
    Setting(
        "authorizer",
        "BROADCASTER_AUTHORIZER",
        "SQL function f(claims jsonb, table_id text) returns boolean deciding each "
        "subscribe, instead of the claim; f(claims jsonb, table_id text, binding jsonb) "
        "is also given the Supabase binding.",
    ),
    Setting(
        "authorizer_cache_seconds",
        "BROADCASTER_AUTHORIZER_CACHE_SECONDS",
        "Seconds the SQL authorizer's answers are cached.",
    ),
    Setting(
        "auth_timeout",
        "BROADCASTER_AUTH_TIMEOUT",
        "Seconds a connection has to authenticate before it is closed (4001).",
    ),
    Setting(
        "handshake_timeout",
        "BROADCASTER_HANDSHAKE_TIMEOUT",
        "Seconds a new TCP connection has to send a complete HTTP request.",
    ),
    Setting(
        "max_connections",
        "BROADCASTER_MAX_CONNECTIONS",
        "WebSocket connections one process accepts; more are refused with HTTP 503.",
    ),
    Setting(
        "max_messages_per_second",
        "BROADCASTER_MAX_MESSAGES_PER_SECOND",
        "Messages a connection may send a second (in bursts of twice that, or of a full "
        "resubscribe); more get rate_limited errors.",
    ),
    Setting(
        "max_errors",
        "BROADCASTER_MAX_ERRORS",
        "Errors a connection may cause in a minute before it is closed (4003).",
    ),
    Setting(
        "allowed_origins",
        "BROADCASTER_ALLOWED_ORIGINS",
        "Comma-separated Origin values browsers may connect from (default: any); "
        "others are refused with HTTP 403.",
    ),
    Setting(
        "publishable_keys",
        "BROADCASTER_PUBLISHABLE_KEYS",
        "Supabase publishable keys accepted as apikey, each mapped to a role: "
        "sb_publishable_abc=anon,sb_publishable_def=service.",
    ),
)


def markdown_table() -> str:
    """The configuration table of the README."""
    lines = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = "(embedded)" if setting.default is None else f"`{setting.default}`"
        lines.append(f"| `{setting.env}` | `{setting.flag}` | {default} | {setting.help} |")
    return "\n".join(lines)
