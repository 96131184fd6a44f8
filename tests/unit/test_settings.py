"""Unit tests for broadcaster.settings: defaults, environment, overrides and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from broadcaster.exceptions import BroadcasterError, ConfigurationError
from broadcaster.settings import SETTINGS, Setting, Settings, markdown_table

BY_NAME = {setting.name: setting for setting in SETTINGS}
NUMERIC = [s for s in SETTINGS if s.kind in (int, float)]


def test_defaults() -> None:
    settings = Settings()

    assert settings == Settings(
        database_url=None,
        host="127.0.0.1",
        port=8000,
        log_level="info",
        data_dir=".broadcaster",
        max_message_bytes=65536,
        max_frame_bytes=1048576,
        max_subscriptions=100,
        max_buffer_bytes=1048576,
        close_timeout=5.0,
        keepalive_interval=5.0,
        keepalive_timeout=5.0,
        reconnect_max_delay=10.0,
    )


def test_load_from_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.load({}) == Settings()
    assert Settings.load({}, {}) == Settings()


def test_settings_table_covers_every_field_once() -> None:
    fields = [field.name for field in dataclasses.fields(Settings)]

    assert [setting.name for setting in SETTINGS] == fields
    assert len({setting.env for setting in SETTINGS}) == len(SETTINGS)
    assert len({setting.flag for setting in SETTINGS}) == len(SETTINGS)


def test_setting_derived_properties() -> None:
    assert BY_NAME["max_message_bytes"].flag == "--max-message-bytes"
    assert BY_NAME["database_url"].flag == "--database-url"
    assert BY_NAME["database_url"].default is None
    assert BY_NAME["database_url"].kind is str
    assert BY_NAME["host"].kind is str
    assert BY_NAME["port"].kind is int
    assert BY_NAME["port"].default == 8000
    assert BY_NAME["close_timeout"].kind is float


def test_env_names() -> None:
    assert BY_NAME["database_url"].env == "DATABASE_URL"
    for setting in SETTINGS:
        if setting.name != "database_url":
            assert setting.env == "BROADCASTER_" + setting.name.upper()


def test_load_parses_the_environment() -> None:
    environ = {
        "DATABASE_URL": "postgresql://u:p@db:5432/app",
        "BROADCASTER_HOST": "0.0.0.0",
        "BROADCASTER_PORT": "9001",
        "BROADCASTER_LOG_LEVEL": "debug",
        "BROADCASTER_DATA_DIR": "/var/lib/broadcaster",
        "BROADCASTER_MAX_MESSAGE_BYTES": "1000",
        "BROADCASTER_MAX_FRAME_BYTES": "2000",
        "BROADCASTER_MAX_SUBSCRIPTIONS": "7",
        "BROADCASTER_MAX_BUFFER_BYTES": "3000",
        "BROADCASTER_CLOSE_TIMEOUT": "0.5",
        "BROADCASTER_KEEPALIVE_INTERVAL": "2",
        "BROADCASTER_KEEPALIVE_TIMEOUT": "1.25",
        "BROADCASTER_RECONNECT_MAX_DELAY": "30",
        "UNRELATED": "ignored",
    }

    settings = Settings.load(environ)

    assert settings == Settings(
        database_url="postgresql://u:p@db:5432/app",
        host="0.0.0.0",
        port=9001,
        log_level="debug",
        data_dir="/var/lib/broadcaster",
        max_message_bytes=1000,
        max_frame_bytes=2000,
        max_subscriptions=7,
        max_buffer_bytes=3000,
        close_timeout=0.5,
        keepalive_interval=2.0,
        keepalive_timeout=1.25,
        reconnect_max_delay=30.0,
    )
    assert type(settings.port) is int
    assert type(settings.keepalive_interval) is float


def test_empty_environment_variable_counts_as_unset() -> None:
    environ = {setting.env: "" for setting in SETTINGS}

    assert Settings.load(environ) == Settings()


def test_port_zero_is_allowed() -> None:
    assert Settings.load({"BROADCASTER_PORT": "0"}).port == 0


def test_overrides_win_over_the_environment() -> None:
    environ = {"BROADCASTER_PORT": "9001", "BROADCASTER_HOST": "0.0.0.0", "DATABASE_URL": "pg://a"}

    settings = Settings.load(environ, {"port": 9002, "database_url": "pg://b"})

    assert settings.port == 9002
    assert settings.database_url == "pg://b"
    assert settings.host == "0.0.0.0"  # not overridden: the environment still counts


def test_override_of_none_is_no_override() -> None:
    overrides: dict[str, Any] = {setting.name: None for setting in SETTINGS}

    assert Settings.load({"BROADCASTER_PORT": "9001"}, overrides).port == 9001
    assert Settings.load({}, overrides) == Settings()


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="port"):
        Settings.load({}, {"port": 70000})


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.env)
@pytest.mark.parametrize("raw", ["abc", "1.5.2", "ten", "--1"])
def test_unparseable_number_names_the_variable(setting: Setting, raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.load({setting.env: raw})

    assert setting.env in str(caught.value)
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize("env", ["BROADCASTER_PORT", "BROADCASTER_MAX_SUBSCRIPTIONS"])
def test_integer_setting_rejects_a_fraction(env: str) -> None:
    with pytest.raises(ConfigurationError, match=env):
        Settings.load({env: "1.5"})


def test_setting_parse_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"^BROADCASTER_PORT: expected int, got 'x'$"):
        BY_NAME["port"].parse("x")
    assert BY_NAME["port"].parse("80") == 80
    assert BY_NAME["close_timeout"].parse("2") == 2.0
    assert BY_NAME["host"].parse("::1") == "::1"


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"BROADCASTER_PORT": "70000"}, "port"),
        ({"BROADCASTER_PORT": "65536"}, "port"),
        ({"BROADCASTER_PORT": "-1"}, "port"),
        ({"BROADCASTER_LOG_LEVEL": "verbose"}, "BROADCASTER_LOG_LEVEL"),
        ({"BROADCASTER_MAX_SUBSCRIPTIONS": "0"}, "max_subscriptions"),
        ({"BROADCASTER_MAX_MESSAGE_BYTES": "-5"}, "max_message_bytes"),
        ({"BROADCASTER_MAX_BUFFER_BYTES": "0"}, "max_buffer_bytes"),
        ({"BROADCASTER_CLOSE_TIMEOUT": "0"}, "close_timeout"),
        ({"BROADCASTER_KEEPALIVE_INTERVAL": "-1.5"}, "keepalive_interval"),
        ({"BROADCASTER_KEEPALIVE_TIMEOUT": "0.0"}, "keepalive_timeout"),
        ({"BROADCASTER_RECONNECT_MAX_DELAY": "-10"}, "reconnect_max_delay"),
        ({"BROADCASTER_PUBLISH": '"a, b'}, "BROADCASTER_PUBLISH.*double quote is left open"),
        (
            {"BROADCASTER_MAX_MESSAGE_BYTES": "2000", "BROADCASTER_MAX_FRAME_BYTES": "1000"},
            "max_frame_bytes",
        ),
    ],
)
def test_out_of_range_values_are_configuration_errors(environ: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Settings.load(environ)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.kind is float], ids=lambda s: s.env)
def test_nan_is_not_a_valid_duration(setting: Setting) -> None:
    # float() accepts "nan", and NaN <= 0 is false, so the positivity check lets
    # it through; every timeout computed from it is then NaN.
    with pytest.raises(ConfigurationError):
        Settings.load({setting.env: "nan"})


def test_max_frame_bytes_may_equal_max_message_bytes() -> None:
    settings = Settings.load(
        {"BROADCASTER_MAX_MESSAGE_BYTES": "4096", "BROADCASTER_MAX_FRAME_BYTES": "4096"}
    )

    assert settings.max_frame_bytes == settings.max_message_bytes == 4096


def test_the_tables_to_publish_are_a_comma_separated_list() -> None:
    assert Settings().tables_to_publish == ()
    settings = Settings.load({"BROADCASTER_PUBLISH": 'public.items, "My,Table" ,'})

    assert settings.tables_to_publish == ("public.items", '"My,Table"')


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_configuration_error_is_a_broadcaster_error() -> None:
    with pytest.raises(BroadcasterError):
        Settings.load({"BROADCASTER_PORT": "x"})


def test_markdown_table_lists_every_setting() -> None:
    lines = markdown_table().splitlines()

    assert lines[:2] == ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    assert len(lines) == 2 + len(SETTINGS)
    for line, setting in zip(lines[2:], SETTINGS, strict=True):
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        assert cells[0] == f"`{setting.env}`"
        assert cells[1] == f"`{setting.flag}`"
        assert cells[3] == setting.help
        if setting.default is None:
            assert cells[2] == "(embedded)"
        else:
            assert cells[2] == f"`{setting.default}`"


def test_markdown_table_defaults() -> None:
    table = markdown_table()

    assert "| `BROADCASTER_PORT` | `--port` | `8000` |" in table
    assert "| `DATABASE_URL` | `--database-url` | (embedded) |" in table
    assert "| `BROADCASTER_CLOSE_TIMEOUT` | `--close-timeout` | `5.0` |" in table


def test_the_readme_configuration_table_is_current() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("<!-- settings-table")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end].strip() == markdown_table()
