"""Request signing and the header parsers, pure: the vector of docs/design.md §4, the string
to sign, versions, dates and Authorization headers, fuzzed (against the store:
tests/integration/test_authenticate.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.http.errors import STATUS
from gateway.identity.signing import (
    is_known_version,
    parse_authorization,
    parse_date,
    raw_target,
    sign_request,
    string_to_sign,
)
from tests.support.vector import ACCESS_KEY, DATE, HOST, SECRET, SIGNATURE, TARGET, VERSION


def test_the_design_vector_signs() -> None:
    assert sign_request(
        "GET", TARGET, DATE, HOST, "application/octet-stream", VERSION, ACCESS_KEY, SECRET
    ) == (f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS_KEY}:{SIGNATURE}")


def test_string_to_sign_lines() -> None:
    assert string_to_sign("get", TARGET, DATE, HOST, "text/plain; charset=utf-8", VERSION) == (
        f"GET\n{TARGET}\n{DATE}\nhost:{HOST}\ncontent-type:text/plain\n"
        f"x-backendai-version:{VERSION}\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert "content-type:application/octet-stream" in string_to_sign(
        "GET", "/", DATE, HOST, "", "v"
    )


@pytest.mark.parametrize(
    ("version", "known"),
    [
        ("v4.20190615", True),
        ("v8.20240915", True),
        ("v9.20991231", True),
        ("v3.20190615", False),
        ("v10.20190615", False),
        ("v4.20190230", False),
        ("v4.2019061", False),
        ("v4.20190615 ", False),
        ("4.20190615", False),
        ("v4.\uff12\uff10\uff11\uff19\uff10\uff16\uff11\uff15", False),  # full-width digits
        ("", False),
    ],
)
def test_known_versions(version: str, known: bool) -> None:
    assert is_known_version(version) is known


def test_parse_date_forms() -> None:
    expected = datetime(2019, 10, 7, 12, 34, 56, tzinfo=UTC)
    for value in (
        "2019-10-07T12:34:56+00:00",
        "2019-10-07T12:34:56Z",
        "2019-10-07T12:34:56",
        "2019-10-07T14:34:56+02:00",
        "Mon, 07 Oct 2019 12:34:56 GMT",
        " Mon, 07 Oct 2019 12:34:56 -0000 ",
    ):
        assert parse_date(value) == expected, value
        assert parse_date(value).tzinfo is UTC


@pytest.mark.parametrize(
    "value", ["", "now", "Mon, 32 Oct 2019 12:34:56 GMT", "0001-01-01T00:00:00+01:00", "9" * 300]
)
def test_parse_date_rejects(value: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_date(value)
    assert (STATUS[info.value.slug], info.value.slug) == (400, "invalid-auth-params")


def test_parse_authorization_forms() -> None:
    sig = "AB" * 32
    assert parse_authorization(f"BackendAI signMethod=HMAC-SHA256, credential=AK:{sig}") == (
        "AK",
        sig.lower(),
    )
    assert parse_authorization(f"BackendAI credential=AK:{sig},signmethod=hmac-sha256") == (
        "AK",
        sig.lower(),
    )
    for bad in (
        "",
        "BackendAI",
        "BackendAI signMethod=HMAC-SHA256",
        f"BackendAI signMethod=HMAC-SHA256, credential={sig}",
        "BackendAI signMethod=HMAC-SHA256, credential=AK:xyz",
        f"BackendAI signMethod=HMAC-SHA256, credential=A K:{sig}",
        f"BackendAI signMethod=HMAC-SHA256 credential=AK:{sig}",
        f"Sorna signMethod=HMAC-SHA256, credential=AK:{sig}",
    ):
        with pytest.raises(GatewayError, match="Malformed Authorization header"):
            parse_authorization(bad)


def test_raw_target() -> None:
    assert raw_target(b"/stream/kernel/_/events", b"") == "/stream/kernel/_/events"
    assert raw_target(b"/a%20b", b"group=*&x=%2A") == "/a%20b?group=*&x=%2A"


_FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_date_like = st.one_of(
    st.text(),
    st.text(alphabet="0123456789-:+TZ.,  WSMonTueGMTOct", max_size=40),
    st.datetimes().map(lambda d: d.isoformat()),
    # RFC 1123 shapes with out-of-range parts (from_regex would be ~10x slower here)
    st.builds(
        "{}, {} {} {} {}:{}:{} {}".format,
        st.sampled_from(["Mon", "Sun", "Xyz", ""]),
        st.integers(-1, 40),
        st.sampled_from(["Oct", "Feb", "Foo"]),
        st.integers(-1, 100_000),
        st.integers(-1, 99),
        st.integers(-1, 99),
        st.integers(-1, 99),
        st.sampled_from(["GMT", "+0900", "-0000", "+9999", "EST", ""]),
    ),
)


@_FUZZ
@given(_date_like)
def test_parse_date_raises_only_problem(value: str) -> None:
    try:
        parsed = parse_date(value)
    except GatewayError as exc:
        assert STATUS[exc.slug] == 400
    else:
        assert parsed.tzinfo is UTC


_auth_like = st.one_of(
    st.text(),
    st.builds(
        lambda a, b, c: f"BackendAI {a}={b}, credential={c}",
        st.text(max_size=20),
        st.text(max_size=20),
        st.text(max_size=80),
    ),
    st.builds(
        "BackendAI signMethod=HMAC-SHA256, credential={}:{}".format,
        st.text(max_size=10),
        st.text(alphabet="0123456789abcdefABCDEF:", min_size=62, max_size=66),
    ),
)


@_FUZZ
@given(_auth_like)
def test_parse_authorization_raises_only_problem(value: str) -> None:
    try:
        access_key, signature = parse_authorization(value)
    except GatewayError as exc:
        assert STATUS[exc.slug] == 400
    else:
        assert access_key and len(signature) == 64
