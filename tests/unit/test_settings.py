"""The settings object (``gateway.settings``): sections declared once with msgspec, text casts
from ``GATEWAY_*`` variables and the ``gateway serve`` flags alike, the declared bounds and
checks, errors that name the variable and flag, and the environment round trip worker
processes rely on."""

from __future__ import annotations

import re

import msgspec
import pytest

from gateway.cli import build_parser
from gateway.settings import ENV_PREFIX, FIELDS, BridgeSettings, Settings, SettingsError
from gateway.settings.sections import SECTIONS

#: a text per declared kind, each cast to something other than the text itself
SAMPLES = {
    "int": ("7", 7),
    "float": ("0.5", 0.5),
    "str": ("debug", "debug"),
    "list": ("http://a.test, http://b.test,,", ("http://a.test", "http://b.test")),
}


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("port", "8080", 8080),
        ("buffer_cap", " 2048 ", 2048),
        ("ping_interval", "2.5", 2.5),
        ("write_deadline", "3", 3.0),
        ("cookie_secure", "1", True),
        ("cookie_secure", "TRUE", True),
        ("cookie_secure", " yes ", True),
        ("cookie_secure", "on", True),
        ("cookie_secure", "0", False),
        ("cookie_secure", "False", False),
        ("cookie_secure", "no", False),
        ("cookie_secure", "off", False),
        ("cookie_secure", "", False),
        ("cors_origins", "http://a.test,http://b.test", ("http://a.test", "http://b.test")),
        ("cors_origins", " http://a.test , ,", ("http://a.test",)),
        ("cors_origins", "", ()),
        ("log_level", "warning", "warning"),
        # as before the declared sections: a choice case-folded, ints by int()
        ("log_level", "INFO", "info"),
        ("log_format", " JSON ", "json"),
        ("port", "+80", 80),
        ("max_streams", "1_000", 1000),
        # text exactly as given: a password may begin or end with a space
        ("redis_password", " pw with space ", " pw with space "),
        ("replica", "r 1", "r 1"),
    ],
)
def test_parse_casts_by_the_declared_type(name: str, raw: str, value: object) -> None:
    parsed = Settings.parse(name, raw)
    assert parsed == value and type(parsed) is type(value)


#: bad texts for a field of each kind, and that kind as the error should name it
BAD_TEXTS = {
    "port": (["eighty", "80.5", "", "8080.0", "1e3"], "int"),
    "write_deadline": (["soon", "1,5"], "float"),
    "cookie_secure": (["maybe", "2"], "bool"),
}


@pytest.mark.parametrize("name", sorted(BAD_TEXTS))
def test_a_bad_text_is_an_error_naming_the_variable(name: str) -> None:
    texts, kind = BAD_TEXTS[name]
    for raw in texts:
        with pytest.raises(SettingsError) as info:
            Settings.parse(name, raw)
        message = str(info.value)
        assert message.startswith(f"{ENV_PREFIX}{name.upper()}: {raw!r} is not a valid {kind}")


def test_settings_made_in_code_are_checked_too() -> None:
    from gateway.settings import FanoutSettings, ServerSettings

    with pytest.raises(SettingsError, match="GATEWAY_PORT"):
        Settings(server=ServerSettings(port=0))
    with pytest.raises(SettingsError, match="GATEWAY_BUFFER_CAP"):
        Settings(fanout=FanoutSettings(buffer_cap=-5))
    with pytest.raises(SettingsError, match="GATEWAY_LOG_LEVEL"):
        Settings(server=ServerSettings(log_level="LOUD"))  # type: ignore[arg-type]


def test_a_secret_from_a_file_survives_the_worker_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    secret = Path(str(tmp_path)) / "pw"
    secret.write_text(" pw with space \n")
    loaded = Settings.load({"GATEWAY_REDIS_PASSWORD_FILE": str(secret)})
    assert loaded.redis.password == " pw with space "
    assert Settings.load(loaded.to_env()).redis.password == " pw with space "


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GATEWAY_LOG_LEVEL": "verbose"}, "must be one of debug, info, warning, error"),
        ({"GATEWAY_API_VERSION": "4"}, "must be auto, or v<major>.<YYYYMMDD>"),
        ({"GATEWAY_STREAM_MAX_LIFETIME": "604801"}, "must be 0 (off) or 1-604800 s"),
        ({"GATEWAY_STARTUP_TIMEOUT": "0"}, "must be a float > 0 and <= 600 s"),
        ({"GATEWAY_COOKIE_SECURE": "maybe"}, "must be true or false (or 1/0, yes/no, on/off)"),
    ],
)
def test_errors_say_what_the_setting_must_be(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(env)
    assert says in str(info.value)


def test_a_bad_choice_flag_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-level", "verbose"])
    assert "choose from 'debug', 'info', 'warning', 'error'" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "--log-level", "INFO"])
    assert args.log_level == "info"


def test_every_field_has_a_kind_parse_knows() -> None:
    kinds = {f.kind for f in FIELDS.values()}
    assert kinds <= {*SAMPLES, "bool", "choice"}, kinds


def test_every_setting_is_declared_once_with_a_flat_name_of_its_own() -> None:
    """Each section field has one flat name (its variable and flag), none shared, and each
    has a meaning; every field with numeric bounds states them in its declaration."""
    declared = sum(len(msgspec.structs.fields(kind)) for kind in SECTIONS.values())
    assert len(FIELDS) == declared == 56
    assert all(f.description for f in FIELDS.values())
    assert FIELDS["redis_url"].section == "redis" and FIELDS["redis_url"].attr == "url"
    assert FIELDS["prefix"].section == "redis" and FIELDS["prefix"].attr == "prefix"
    assert FIELDS["ping_interval"].section == "fanout"


def test_load_reads_the_environment_and_flags_win() -> None:
    env = {
        "GATEWAY_PORT": "9000",
        "GATEWAY_PING_INTERVAL": "2.5",
        "GATEWAY_COOKIE_SECURE": "yes",
        "GATEWAY_CORS_ORIGINS": "http://a.test,http://b.test",
        "GATEWAY_PREFIX": "east",
        "OTHER_PORT": "1",
    }
    loaded = Settings.load(env)
    assert loaded.server.port == 9000 and loaded.fanout.ping_interval == 2.5
    assert loaded.browser.cookie_secure is True
    assert loaded.browser.cors_origins == ("http://a.test", "http://b.test")
    assert loaded.redis.prefix == "east"
    assert Settings.load(env, port=9001, prefix=None).server.port == 9001  # None: unset flag
    assert Settings.load(env, port=None).server.port == 9000
    assert Settings.load({}).server.port == Settings().server.port == 8080  # the front door


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_PORT": "0"}, "GATEWAY_PORT (--port)"),
        ({"GATEWAY_BUFFER_CAP": "10"}, "GATEWAY_BUFFER_CAP (--buffer-cap)"),
        ({"GATEWAY_LOG_FORMAT": "xml"}, "GATEWAY_LOG_FORMAT (--log-format)"),
        ({"GATEWAY_REDIS_URL": "http://h:1"}, "GATEWAY_REDIS_URL (--redis-url)"),
        ({"GATEWAY_PREFIX": "has space"}, "GATEWAY_PREFIX (--prefix)"),
        ({"GATEWAY_CORS_ORIGINS": "http://x.test/path"}, "GATEWAY_CORS_ORIGINS (--cors-origins)"),
        ({"GATEWAY_MAX_STREAMS": "nope"}, "GATEWAY_MAX_STREAMS"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable_and_flag(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(env)
    assert str(info.value).startswith(named), info.value


def test_settings_reject_a_bad_origin() -> None:
    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        Settings.load({}, cors_origins=("http://x.test/path",))


def test_the_environment_round_trip_keeps_every_value() -> None:
    changed = Settings.load(
        {},
        port=9100,
        ping_interval=1.5,
        cookie_secure=True,
        cors_origins=("http://a.test", "https://b.test:8443"),
        log_format="json",
        replica="r-1",
    )
    env = changed.to_env()
    assert set(env) == {f.env for f in FIELDS.values()}
    assert Settings.load(env) == changed
    assert Settings.load(Settings.load({}, replica="r-2").to_env()).browser.cookie_secure is False
    assert changed.replace(port=9200).server.port == 9200
    with pytest.raises(SettingsError, match="GATEWAY_PORT"):
        changed.replace(port=0)


def test_serve_flags_cast_exactly_as_the_environment_does() -> None:
    parser = build_parser()
    assert vars(parser.parse_args(["serve"])).keys() >= set(FIELDS)
    for name, f in FIELDS.items():
        unset = parser.parse_args(["serve"])
        assert getattr(unset, name) is None, name  # falls back to env, then default
        if f.kind == "bool":
            assert getattr(parser.parse_args(["serve", f.flag]), name) is True
            assert getattr(parser.parse_args(["serve", "--no-" + f.flag[2:]]), name) is False
            continue
        raw, value = SAMPLES[f.kind] if f.kind != "choice" else (f.choices[0], f.choices[0])
        parsed = getattr(parser.parse_args(["serve", f.flag, raw]), name)
        assert parsed == value == Settings.parse(name, raw), name
        assert type(parsed) is type(value), name


def test_a_bad_flag_value_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--port", "eighty"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --port: invalid int value: 'eighty'" in err, err


def test_the_redis_url_falls_back_to_the_shared_kev_variable() -> None:
    shared = "redis://127.0.0.1:7000/1"
    assert Settings.load({"KEV_REDIS_URL": shared}).redis.url == shared
    own = {"KEV_REDIS_URL": shared, "GATEWAY_REDIS_URL": "redis://127.0.0.1:7001/0"}
    assert Settings.load(own).redis.url == "redis://127.0.0.1:7001/0"  # the gateway's wins
    assert Settings.load(own, redis_url="redis://h:1/0").redis.url == "redis://h:1/0"
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.load({"KEV_REDIS_URL": "http://not-redis"})


def test_every_setting_has_its_meaning_written_once_and_serve_help_shows_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli import build_parser
    from gateway.settings import field_docs

    docs = field_docs()
    assert set(docs) == set(FIELDS)
    assert all(len(text) > 10 for text in docs.values()), docs
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    # argparse wraps lines, also after hyphens: compared without whitespace
    shown = "".join(capsys.readouterr().out.split())
    for name, text in docs.items():
        flag = "--" + name.replace("_", "-")
        found = re.search(re.escape(flag) + "(?![a-z-])", shown)
        assert found, f"{flag} is not in gateway serve --help"
        entry = shown[found.end() :]
        assert "".join(text.split()) in entry, name
        assert f"envGATEWAY_{name.upper()}" in entry and "[default:" in entry, name
    assert "[default:8080;envGATEWAY_PORT]" in shown
    assert "elseKEV_REDIS_URL" in shown


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GATEWAY_BRIDGE_FROM_DB", "postgresql://u@127.0.0.1:abc/db", "Port"),
        ("GATEWAY_BRIDGE_FROM_DB", "postgresql://u@[::1/db", "IPv6"),
        ("GATEWAY_BRIDGE_FROM_DB", "postgresql://u@h/db?sslmode=bogus", "sslmode"),
        ("GATEWAY_BRIDGE_FROM_DB", "postgresql:///db", "no host"),
        ("GATEWAY_BRIDGE_FROM_REDIS", "redis://h/abc", "not a number"),
        ("GATEWAY_BRIDGE_FROM_REDIS", "redis://h:x/4", "port"),
        ("GATEWAY_BRIDGE_FROM_REDIS", "redis+sentinel://h:26379/mymaster/x", "not a number"),
        ("GATEWAY_BRIDGE_FROM_REDIS", "unix:///s.sock?db=x", "not a number"),
        ("GATEWAY_REDIS_URL", "redis://h/0/extra", "path"),
    ],
)
def test_connection_urls_that_would_fail_only_later_are_refused_at_once(
    variable: str, value: str, says: str
) -> None:
    """The review found a bad port in --from-db passing the settings and ending the bridge's
    loop at its first lookup, and redis://h/abc read as database 0 by redis-py."""
    env = {
        "GATEWAY_BRIDGE_FROM_REDIS": "redis://h",
        "GATEWAY_BRIDGE_FROM_DB": "postgresql://u@h/db",
        variable: value,
    }
    with pytest.raises(SettingsError, match=says) as caught:
        BridgeSettings.load(env)
    assert variable in str(caught.value)
