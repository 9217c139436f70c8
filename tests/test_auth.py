from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.http.errors import STATUS
from gateway.identity.authenticate import authenticate
from gateway.identity.models import Identity, Keypair, User
from gateway.identity.signing import (
    MAX_AUTH_HEADER,
    is_known_version,
    parse_authorization,
    parse_date,
    raw_target,
    sign_request,
    signed_headers,
    string_to_sign,
)
from gateway.identity.store import IdentityStore
from publisher.keys import Keys

# DESIGN.md section 4 test vector
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TARGET = "/stream/kernel/_/events?sessionId=mysession-01&group=*"
DATE = "2019-10-07T12:34:56+00:00"
HOST = "127.0.0.1:8081"
VERSION = "v4.20190615"
SIGNATURE = "da0d0056beb4162ea3aa354dcbe67bb45eb4e06146482897bb11c653f6011361"
NOW = datetime(2019, 10, 7, 12, 40, tzinfo=UTC)


@pytest.fixture
async def store(async_redis: aredis.Redis) -> IdentityStore:
    store = IdentityStore(async_redis, Keys("authtest"), cache_ttl=0)
    await store.add_user(User("alice", "user", "default"))
    await store.add_keypair(Keypair(ACCESS_KEY, SECRET, "alice"))
    await store.add_keypair(Keypair("AKIAINACTIVE", SECRET, "alice", active=False))
    return store


def vector_headers(**changes: str | None) -> dict[str, str]:
    headers = {
        "authorization": f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS_KEY}:{SIGNATURE}",
        "date": DATE,
        "host": HOST,
        "x-backendai-version": VERSION,
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


def signed(date: str, *, access_key: str = ACCESS_KEY, secret: str = SECRET) -> str:
    return sign_request("GET", TARGET, date, HOST, None, VERSION, access_key, secret)


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


@pytest.mark.anyio
async def test_the_design_vector_authenticates(store: IdentityStore) -> None:
    identity = await authenticate("GET", TARGET, vector_headers(), store, now=NOW)
    assert identity == Identity(ACCESS_KEY, "alice", "user", "default")


@pytest.mark.parametrize(
    "date",
    [
        "Mon, 07 Oct 2019 12:34:56 GMT",
        "Mon, 07 Oct 2019 14:34:56 +0200",
        "2019-10-07T12:34:56Z",
        "2019-10-07T12:34:56.123456+00:00",
        "2019-10-07T12:34:56",
        "2019-10-07T21:34:56+09:00",
    ],
)
@pytest.mark.anyio
async def test_rfc1123_and_iso_dates_authenticate(store: IdentityStore, date: str) -> None:
    headers = vector_headers(date=date, authorization=signed(date))
    assert (await authenticate("GET", TARGET, headers, store, now=NOW)).user_id == "alice"


@pytest.mark.anyio
async def test_x_backendai_date_is_the_fallback(store: IdentityStore) -> None:
    headers = vector_headers(date=None, x_backendai_date=DATE)
    assert (await authenticate("GET", TARGET, headers, store, now=NOW)).user_id == "alice"


@pytest.mark.anyio
async def test_naive_now_is_utc_and_skew_edges_pass(store: IdentityStore) -> None:
    naive = NOW.replace(tzinfo=None)
    assert await authenticate("GET", TARGET, vector_headers(), store, now=naive)
    exact = datetime(2019, 10, 7, 12, 49, 56, tzinfo=UTC)
    assert await authenticate("GET", TARGET, vector_headers(), store, now=exact)


def _signed_other(date: str) -> str:
    return signed(date, access_key="AKIAINACTIVE")


FAILURES: list[tuple[str, dict[str, str | None], str, int, str, str]] = [
    # (case, header changes, method, status, slug, title)
    ("wrong signature", {"authorization": signed(DATE, secret="x" * 40)}, "GET", 401,
     "auth-failed", "Signature mismatch"),
    ("other target", {}, "POST", 401, "auth-failed", "Signature mismatch"),
    ("date too old", {"date": "2019-10-07T12:24:59+00:00"}, "GET", 400,
     "invalid-auth-params", "Too large clock skew"),
    ("date too new", {"date": "Mon, 07 Oct 2019 12:55:01 GMT"}, "GET", 400,
     "invalid-auth-params", "Too large clock skew"),
    ("missing version", {"x-backendai-version": None}, "GET", 400,
     "invalid-auth-params", "Missing X-BackendAI-Version header"),
    ("unknown version", {"x-backendai-version": "v3.20170615"}, "GET", 400,
     "invalid-auth-params", "Unsupported X-BackendAI-Version"),
    ("missing date", {"date": None}, "GET", 400,
     "invalid-auth-params", "Missing Date or X-BackendAI-Date header"),
    ("unparseable date", {"date": "yesterday"}, "GET", 400,
     "invalid-auth-params", "Invalid date header"),
    ("missing authorization", {"authorization": None}, "GET", 400,
     "invalid-auth-params", "Missing Authorization header"),
    ("garbled authorization", {"authorization": "Bearer abc"}, "GET", 400,
     "invalid-auth-params", "Malformed Authorization header"),
    ("huge authorization", {"authorization": "BackendAI " + "x" * MAX_AUTH_HEADER}, "GET", 400,
     "invalid-auth-params", "Authorization header too large"),
    ("other sign method", {"authorization": signed(DATE).replace("SHA256", "SHA1")}, "GET", 400,
     "invalid-auth-params", "Unsupported signMethod"),
    ("missing host", {"host": None}, "GET", 400,
     "invalid-auth-params", "Missing or oversized Host header"),
    ("unknown key", {"authorization": signed(DATE, access_key="AKIANOBODY")}, "GET", 401,
     "auth-failed", "Access key not found"),
    ("inactive key", {"authorization": _signed_other(DATE)}, "GET", 401,
     "auth-failed", "Inactive keypair"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "method", "status", "slug", "title"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
@pytest.mark.anyio
async def test_each_failure_has_its_status_slug_and_title(
    store: IdentityStore,
    changes: dict[str, str | None],
    method: str,
    status: int,
    slug: str,
    title: str,
) -> None:
    with pytest.raises(GatewayError) as info:
        await authenticate(method, TARGET, vector_headers(**changes), store, now=NOW)
    assert (STATUS[info.value.slug], info.value.slug, info.value.title) == (status, slug, title)
    assert SECRET not in str(info.value)


def test_failure_titles_are_distinct_per_cause() -> None:
    titles = {case[0]: case[5] for case in FAILURES}
    causes = [c for c in titles if c not in ("other target", "date too new")]
    assert len({titles[c] for c in causes}) == len(causes)


@pytest.mark.anyio
async def test_an_inactive_key_with_a_bad_signature_only_says_mismatch(
    store: IdentityStore,
) -> None:
    forged = signed(DATE, access_key="AKIAINACTIVE", secret="y" * 40)
    with pytest.raises(GatewayError, match="Signature mismatch"):
        await authenticate("GET", TARGET, vector_headers(authorization=forged), store, now=NOW)


@pytest.mark.anyio
async def test_a_keypair_without_its_user_fails(
    store: IdentityStore, async_redis: aredis.Redis
) -> None:
    await async_redis.delete(store.keys.user("alice"))
    with pytest.raises(GatewayError, match="Keypair owner not found") as info:
        await authenticate("GET", TARGET, vector_headers(), store, now=NOW)
    assert STATUS[info.value.slug] == 401


@pytest.mark.anyio
async def test_custom_max_skew(store: IdentityStore) -> None:
    with pytest.raises(GatewayError, match="Too large clock skew"):
        await authenticate(
            "GET", TARGET, vector_headers(), store, now=NOW, max_skew=timedelta(minutes=1)
        )


@pytest.mark.anyio
async def test_signed_headers_authenticate(store: IdentityStore) -> None:
    now = datetime(2024, 9, 15, 8, 0, 0, 500_000, tzinfo=UTC)
    headers = {
        k.lower(): v
        for k, v in signed_headers("GET", TARGET, HOST, ACCESS_KEY, SECRET, now=now).items()
    }
    assert headers["date"] == "Sun, 15 Sep 2024 08:00:00 GMT"
    headers["host"] = HOST
    assert (await authenticate("GET", TARGET, headers, store, now=now)).user_id == "alice"


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
