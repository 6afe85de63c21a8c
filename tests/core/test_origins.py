import pytest

from gateway.core.origins import (
    OriginError,
    invalid_origins,
    normalise_origin,
    origin_allowed,
    origin_set,
    parse_origin,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://shop.example", "https://shop.example"),
        ("HTTPS://Shop.Example:443/", "https://shop.example"),
        ("  https://shop.example\t", "https://shop.example"),  # blanks around: stripped
        ("http://shop.example:80", "http://shop.example"),
        ("https://shop.example:80", "https://shop.example:80"),  # not https' default
        ("http://shop.example:443", "http://shop.example:443"),
        ("https://shop.example:0443", "https://shop.example"),
        ("https://shop.example:", "https://shop.example"),  # an empty port is no port
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("https://shop.example:8443", "https://shop.example:8443"),
        ("https://shop.example:65535", "https://shop.example:65535"),
        ("http://[::1]:8081", "http://[::1]:8081"),
        ("http://[0:0:0:0:0:0:0:1]", "http://[::1]"),  # IPv6 written compressed
        ("http://[2001:DB8::1]:80", "http://[2001:db8::1]"),
        ("http://localhost:3000", "http://localhost:3000"),
        # browsers keep underscores in host names and send them unchanged
        ("https://shop_x.example", "https://shop_x.example"),
        # internationalised names: the punycode form browsers send (UTS 46, non-transitional)
        ("https://Bücher.Example", "https://xn--bcher-kva.example"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ("https://faß.de", "https://xn--fa-hia.de"),
        ("https://\uff33\uff28\uff2f\uff30\u3002example", "https://shop.example"),  # full width
        ("https://shop.example.", "https://shop.example."),  # a distinct origin, kept
    ],
)
def test_accepted_origins_are_serialised_as_browsers_send_them(value: str, expected: str) -> None:
    assert parse_origin(value) == expected
    assert normalise_origin(value) == expected
    assert parse_origin(expected) == expected  # the serialisation is a fixed point


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("null", "opaque origin"),
        ("shop.example", "expected scheme://host[:port]"),
        ("ftp://shop.example", "http or https"),
        ("https://shop.example/path", "no path"),
        ("https://shop.example/shop/", "use https://shop.example"),
        ("https://shop.example\\x", "no path"),
        ("https://shop.example?x=1", "no query or fragment"),
        ("https://shop.example#top", "no query or fragment"),
        ("https://user@shop.example", "no user info"),
        ("https://user:pw@shop.example", "no user info"),
        ("https://*.shop.example", "wildcards"),
        ("*", "wildcards"),
        ("https://shop.example:0", "out of range"),
        ("https://shop.example:65536", "out of range"),
        ("https://shop.example:99999", "out of range"),
        ("https://shop.example:" + "9" * 5000, "out of range"),
        ("https://shop.example:8x", "not a number"),
        ("https://shop..example", "empty label"),
        ("https://.shop.example", "empty label"),
        ("https://shop example", "blanks"),
        ("https://sh!op.example", "letters, digits"),
        ("https://" + "a" * 64 + ".example", "at most 63"),
        ("https://" + ".".join(["a" * 60] * 5), "longer than 253"),
        ("https://xn--zz.example", "punycode"),
        ("http://1.2.3.256", "dotted-decimal"),
        ("http://127.1", "dotted-decimal"),
        ("http://0x7f.0.0.1", "dotted-decimal"),
        ("http://[::1", "end with ']'"),
        ("http://[not-ipv6]", "not an IPv6 address"),
        ("http://[fe80::1%eth0]", "zone"),
        ("http://::1:8080", "brackets"),
        ("https://", "no host"),
    ],
)
def test_refused_origins_say_why(value: str, reason: str) -> None:
    with pytest.raises(OriginError, match=reason.replace("[", r"\[").replace("?", r"\?")):
        parse_origin(value)
    assert normalise_origin(value) is None


def test_invalid_origins_lists_each_refusal() -> None:
    found = invalid_origins(["https://ok.example", "https://user@x.example", "null"])
    assert [value for value, _ in found] == ["https://user@x.example", "null"]
    assert "user info" in found[0][1]


def test_matching_is_exact_after_normalisation() -> None:
    allowed = origin_set(["https://Shop.example/", "http://127.0.0.1:8081", "garbage"])
    assert allowed == {"https://shop.example", "http://127.0.0.1:8081"}
    assert origin_allowed("https://shop.example", allowed)
    assert origin_allowed("https://shop.example:443", allowed)
    assert not origin_allowed("http://shop.example", allowed)  # another scheme
    assert not origin_allowed("https://shop.example.evil", allowed)
    assert not origin_allowed("https://evil-shop.example", allowed)
    assert not origin_allowed("http://localhost:8081", allowed)  # another host
    assert not origin_allowed("http://127.0.0.1:8082", allowed)  # another port
    assert not origin_allowed("null", allowed)
    assert not origin_allowed("https://shop.example.", allowed)  # fully qualified: distinct


def test_an_idn_origin_matches_the_header_browsers_send() -> None:
    allowed = origin_set([parse_origin("https://bücher.example")])
    assert origin_allowed("https://xn--bcher-kva.example", allowed)
