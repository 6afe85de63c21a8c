import pytest

from gateway.core.origins import normalise_origin, origin_allowed, origin_set


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://shop.example", "https://shop.example"),
        ("HTTPS://Shop.Example:443/", "https://shop.example"),
        ("http://shop.example:80", "http://shop.example"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("https://shop.example:8443", "https://shop.example:8443"),
        ("http://[::1]:8081", "http://[::1]:8081"),
        ("null", None),
        ("", None),
        ("shop.example", None),
        ("ftp://shop.example", None),
        ("https://shop.example/path", None),
        ("https://user@shop.example", None),
        ("https://shop.example:0", None),
        ("https://shop.example:70000", None),
        ("https://shop..example", None),
        ("https://*.shop.example", None),
    ],
)
def test_normalise_origin(value: str, expected: str | None) -> None:
    assert normalise_origin(value) == expected


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
