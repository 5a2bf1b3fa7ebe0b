"""Registered domains from the bundled Public Suffix List: known answers of the PSL's own rules."""
import pyarrow as pa
import pytest

from beamlytics.schemas import domains


@pytest.mark.parametrize("name, registered, sub", [
    ("example.com", "example.com", None),  # apex: no subdomain
    ("www.example.com", "example.com", "www"),
    ("a.b.example.co.uk", "example.co.uk", "a.b"),  # two-label ICANN suffix
    ("co.uk", None, None),  # a public suffix has no registered domain
    ("foo.github.io", "foo.github.io", None),  # private-section suffix: each user page is its own domain
    ("x.y.foo.github.io", "foo.github.io", "x.y"),
    ("www.example.com.", "example.com", "www"),  # fully-qualified, with the root dot
    ("WWW.Example.COM", "example.com", "www"),  # DNS names are case-insensitive
    ("www.bücher.de", "xn--bcher-kva.de", "www"),  # IDN: reported in its ASCII (punycode) form
    ("www.xn--bcher-kva.de", "xn--bcher-kva.de", "www"),  # the same domain, already punycode
    ("shop.example.公司.香港", "example.xn--55qx5d.xn--j6w193g", "shop"),  # IDN two-label suffix
    ("1.2.3.4", None, None),  # IP literals are not names
    ("2001:db8::1", None, None),
    ("[2001:db8::1]", None, None),
    ("localhost", None, None),
    ("", None, None),
    (".", None, None),
    (None, None, None),
])
def test_split_name(name, registered, sub):
    assert domains.split_name(name) == (registered, sub)


def test_columns_map_every_row_and_keep_nulls():
    names = pa.array(["www.example.co.uk", None, "example.co.uk", "10.0.0.1", "www.example.co.uk", "a.b.c.example.org"])
    assert domains.registered_domain(names).to_pylist() == [
        "example.co.uk", None, "example.co.uk", None, "example.co.uk", "example.org"]
    assert domains.subdomain(names).to_pylist() == ["www", None, None, None, "www", "a.b.c"]


def test_chunked_and_empty_columns():
    chunked = pa.chunked_array([["a.example.com"], ["b.example.net", None]])
    assert domains.registered_domain(chunked).to_pylist() == ["example.com", "example.net", None]
    assert domains.registered_domain(pa.array([], pa.string())).to_pylist() == []


def test_reverse_zones_are_recognised():
    registered = domains.registered_domain(pa.array(["4.3.2.10.in-addr.arpa", "b.a.ip6.arpa", "arpa.example.com", None]))
    assert domains.is_reverse_zone(registered).to_pylist() == [True, True, False, False]


def test_no_download_at_run_time(monkeypatch):
    """The list in the installed package is what is used: a lookup works with sockets unusable."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    domains._suffix_list.cache_clear()
    domains.split_name.cache_clear()
    assert domains.split_name("deep.name.example.com.au") == ("example.com.au", "deep.name")


def test_each_distinct_name_is_looked_up_once(monkeypatch):
    real = domains._suffix_list()
    calls = []

    class Counting:
        def privatesuffix(self, name):
            calls.append(name)
            return real.privatesuffix(name)

    monkeypatch.setattr(domains, "_suffix_list", lambda: Counting())
    domains.split_name.cache_clear()
    registered, subdomains = domains.split_names(pa.array(["a.example.com", "b.example.com"] * 1000))
    domains.split_name.cache_clear()
    assert sorted(calls) == ["a.example.com", "b.example.com"]
    assert registered.to_pylist() == ["example.com"] * 2000 and subdomains.to_pylist() == ["a", "b"] * 1000
