"""The Origin allow-list (``relay.core.origins``): exact origins, wildcard subdomains, ``*``,
``null``, and requests without an Origin; the config field that holds the patterns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config.schema import RelaySection
from relay.core.origins import OriginPolicy, parse_origin, parse_pattern

APP = "https://app.example.com"


def test_no_origin_header_is_always_allowed() -> None:
    # Non-browser clients (the Python SDK, servers, websocat) send none.
    assert OriginPolicy([]).allows(None)
    assert OriginPolicy([APP]).allows(None)


def test_any() -> None:
    policy = OriginPolicy(["*"])
    assert policy.allows("https://evil.example")
    assert policy.allows("null")
    assert policy.allows("not an origin at all")


def test_an_empty_list_lets_no_browser_in() -> None:
    policy = OriginPolicy([])
    assert not policy.allows(APP)
    assert not policy.allows("null")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (APP, True),
        ("HTTPS://App.Example.COM", True),  # scheme and host are case-insensitive
        ("https://app.example.com:443", True),  # the default port, spelled out
        ("https://app.example.com.", True),  # a fully qualified name
        ("http://app.example.com", False),  # another scheme
        ("https://app.example.com:8443", False),  # another port
        ("https://evil.example", False),
        ("https://app.example.com.evil.example", False),
        ("https://x.app.example.com", False),  # an exact pattern has no subdomains
        ("https://app.example.com/", False),  # not an origin: a path
        ("https://user@app.example.com", False),
        ("null", False),
        ("", False),
    ],
)
def test_exact_origins(origin: str, allowed: bool) -> None:
    assert OriginPolicy([APP]).allows(origin) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://a.example.com", True),
        ("https://a.b.example.com", True),  # any depth
        ("https://example.com", False),  # not the domain itself
        ("https://badexample.com", False),
        ("https://example.com.evil.example", False),
        ("http://a.example.com", False),
        ("https://a.example.com:444", False),
        ("https://evil.example\\.example.com", False),  # not a host name
        ("https://evil.example%2e.example.com", False),
        ("https://evil.example?.example.com", False),
        ("https://evil.example#.example.com", False),
    ],
)
def test_wildcard_subdomains(origin: str, allowed: bool) -> None:
    assert OriginPolicy(["https://*.example.com"]).allows(origin) is allowed


def test_ports_ipv6_and_null() -> None:
    policy = OriginPolicy(["http://localhost:8080", "http://[::1]:8701", "null"])
    assert policy.allows("http://localhost:8080")
    assert not policy.allows("http://localhost")
    assert policy.allows("http://[::1]:8701")
    assert policy.allows("null")


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "example.com",
        "ftp://example.com",
        "https://example.com/",
        "https://example.com/app",
        "https://example.com?x",
        "https://*.*.example.com",
        "https://a.*.example.com",
        "https://*example.com",
        "https://*.[::1]",
        "https://exa mple.com",
        "https://example.com:99999",
        "wss://example.com",
    ],
)
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"origin pattern|wildcard"):
        parse_pattern(pattern)


def test_the_config_field_checks_its_patterns() -> None:
    assert RelaySection(id="r1").allowed_origins == ("*",)  # default: as before
    section = RelaySection.model_validate(
        {"id": "r1", "allowed_origins": [APP, "https://*.example.org", "null"]}
    )
    assert section.allowed_origins == (APP, "https://*.example.org", "null")
    with pytest.raises(ValueError, match=r"origin patterns: .* \(not 'https://x.com/app'\)"):
        RelaySection.model_validate({"id": "r1", "allowed_origins": ["https://x.com/app"]})


labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
schemes = st.sampled_from(["http", "https"])
ports = st.one_of(st.none(), st.integers(1, 65535))


def origin_text(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" + ("" if port is None else f":{port}")


@given(schemes, domains, ports)
def test_an_origin_is_allowed_by_its_own_exact_pattern(
    scheme: str, host: str, port: int | None
) -> None:
    origin = origin_text(scheme, host, port)
    policy = OriginPolicy([origin])
    assert policy.allows(origin)
    assert policy.allows(origin.upper())
    default = {"http": 80, "https": 443}[scheme]
    assert policy.allows(origin_text(scheme, host, default if port is None else port))


@given(schemes, domains, domains, ports, ports)
def test_a_wildcard_allows_subdomains_and_nothing_else(
    scheme: str, sub: str, domain: str, port: int | None, other_port: int | None
) -> None:
    policy = OriginPolicy([origin_text(scheme, "*." + domain, port)])
    assert policy.allows(origin_text(scheme, f"{sub}.{domain}", port))
    assert not policy.allows(origin_text(scheme, domain, port))
    assert not policy.allows(origin_text(scheme, f"{sub}{domain}", port))  # no dot
    other = "http" if scheme == "https" else "https"
    assert not policy.allows(origin_text(other, f"{sub}.{domain}", port))
    default = {"http": 80, "https": 443}[scheme]
    if (other_port or default) != (port or default):
        assert not policy.allows(origin_text(scheme, f"{sub}.{domain}", other_port))


@given(st.text(max_size=80))
def test_any_header_value_gets_an_answer_never_an_exception(text: str) -> None:
    policy = OriginPolicy([APP, "https://*.example.com", "null"])
    allowed = policy.allows(text)
    if allowed and text != "null":
        parsed = parse_origin(text)
        assert parsed is not None and parsed.scheme == "https" and parsed.port == 443
        assert parsed.host == "app.example.com" or parsed.host.endswith(".example.com")
