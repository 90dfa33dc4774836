"""docs/behaviour.md "Hardened rules" for admin entries (issue 12, items 6 and 9), each as a table:
one address is one canonical entry, and no entry admits the public at large."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable

import pytest

from validator import Admin, Validator
from validator.admin.api import ImportLine
from validator.admin.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main
from validator.errors import ConfigurationError, InvalidEntry
from validator.rules.entries import canonical_domain, normalize_domain
from validator.rules.ips import IPSet
from validator.rules.networks import canonical_ip, check_min_prefixes, ip_removals, normalize_ip

TOKEN = "tok_hardened"

# ------------------------------------------------------------------------------ one address, one entry


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("2606:4700::1111%eth0", id="interface name"),
        pytest.param("2606:4700::1111%1", id="interface number"),
        pytest.param("[2606:4700::1111%eth0]", id="bracketed"),
        pytest.param("fe80::1%eth0", id="link-local"),
        pytest.param("2606:4700::1111%25eth0", id="URL-encoded percent"),
        pytest.param("2606:4700::%eth0/48", id="network"),
    ],
)
def test_zone_identifiers_are_refused(entry: str) -> None:
    with pytest.raises(InvalidEntry, match=r"zone identifier \(%[^)]+\), which names a network interface"):
        normalize_ip(entry, allow_private=True)


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
def test_a_zone_refusal_names_the_entry_to_give_instead() -> None:
    with pytest.raises(InvalidEntry, match="give '2606:4700::1111' alone"):
        normalize_ip("2606:4700::1111%eth0")


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
@pytest.mark.parametrize(
    ("entry", "stored", "request_ip"),
    [
        pytest.param("2606:4700:0:0::1111", "2606:4700::1111", "2606:4700::1111", id="zeros"),
        pytest.param(
            "2606:4700:0000:0000:0000:0000:0000:1111", "2606:4700::1111", "2606:4700::1111", id="long"
        ),
        pytest.param("2606:4700::1111/128", "2606:4700::1111", "2606:4700:0::1111", id="address as /128"),
        pytest.param("2606:4700::1111", "2606:4700::1111", "2606:4700::1111%eth0", id="zone at request"),
        pytest.param("2001:DB8:0::/48", "2001:db8::/48", "2001:db8::99", id="network upper case"),
        pytest.param("::ffff:203.0.113.7/128", "203.0.113.7", "::ffff:203.0.113.7", id="mapped /128"),
        pytest.param("::ffff:203.0.113.0/120", "203.0.113.0/24", "::ffff:203.0.113.9", id="mapped network"),
        pytest.param("::ffff:cb00:7100/120", "203.0.113.0/24", "203.0.113.9", id="mapped hex network"),
        pytest.param("203.0.113.0/32", "203.0.113.0", "203.0.113.0", id="v4 /32"),
    ],
)
def test_ip_entries_are_stored_canonically_and_match_as_stored(
    entry: str, stored: str, request_ip: str
) -> None:
    result = normalize_ip(entry)
    assert result.stored == stored
    assert result.note == f"stored {stored!r}" or entry == stored
    assert request_ip in IPSet([result.stored])


@pytest.mark.promise("P-IP-ENTRIES")
def test_a_network_with_host_bits_is_refused_naming_both_readings() -> None:
    # Refused, not widened: the admin may have meant the one address, and a guess of the
    # network would admit 255 more.
    with pytest.raises(InvalidEntry, match=r"the network 203\.0\.113\.0/24, or the address 203\.0\.113\.7\?"):
        normalize_ip("203.0.113.7/24")


# ------------------------------------------------------------------------------ networks: size


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("32.0.0.0/3", "/3 covers 536,870,912 addresses; the minimum prefix is /16 (setting min_prefix_v4"),
        ("128.0.0.0/3", "/3 covers 536,870,912 addresses; the minimum prefix is /16"),
        ("0.0.0.0/0", "/0 covers 4,294,967,296 addresses; the minimum prefix is /16"),
        ("11.0.0.0/8", "/8 covers 16,777,216 addresses"),
        ("203.0.0.0/15", "/15 covers 131,072 addresses"),
        ("2000::/3", "/3 covers 2^125 addresses; the minimum prefix is /48 (setting min_prefix_v6"),
        ("::/0", "/0 covers 2^128 addresses"),
        ("2606:4700::/32", "/32 covers 2^96 addresses"),
        ("2001:db8::/47", "/47 covers 2^81 addresses"),
    ],
)
def test_networks_shorter_than_the_minimum_prefix_are_refused(entry: str, says: str) -> None:
    with pytest.raises(InvalidEntry) as refused:
        normalize_ip(entry)
    assert str(refused.value).startswith(f"'{entry}': network too large: {says}")


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.parametrize(
    ("entry", "min_prefix_v4", "min_prefix_v6", "allow_private"),
    [
        ("203.0.0.0/16", 16, 48, False),
        ("2606:4700:1::/48", 16, 48, False),
        ("11.0.0.0/8", 8, 48, False),
        ("2606:4700::/32", 16, 32, False),
        ("10.0.0.0/8", 8, 48, True),
    ],
)
def test_networks_within_the_minimum_prefix_are_accepted(
    entry: str, min_prefix_v4: int, min_prefix_v6: int, allow_private: bool
) -> None:
    result = normalize_ip(
        entry, allow_private=allow_private, min_prefix_v4=min_prefix_v4, min_prefix_v6=min_prefix_v6
    )
    assert result.stored == entry


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
def test_allow_private_does_not_lift_the_minimum_prefix() -> None:
    with pytest.raises(InvalidEntry, match=r"network too large: /8 .* min_prefix_v4"):
        normalize_ip("10.0.0.0/8", allow_private=True)


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.parametrize(
    ("v4", "v6"),
    [(33, 48), (-1, 48), (16, 129), (16, -1), (True, 48)],
)
def test_minimum_prefix_settings_must_be_prefix_lengths(v4: int, v6: int) -> None:
    with pytest.raises(ConfigurationError, match="must be a prefix length"):
        check_min_prefixes(v4, v6)
    with pytest.raises(ConfigurationError, match="must be a prefix length"):
        Admin.from_url("memory://", min_prefix_v4=v4, min_prefix_v6=v6)


# ------------------------------------------------------------------------------ special-purpose ranges


@pytest.mark.promise("P-IP-ENTRIES")
@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.parametrize(
    ("entry", "says"),
    [
        pytest.param("2001:0:4136::/48", "2001::/32 is Teredo", id="Teredo"),
        pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32 is Teredo", id="in Teredo"),
        pytest.param("2001:2::/48", "2001:2::/48 is reserved for benchmarking", id="benchmarking"),
        pytest.param("2001:2::7", "2001:2::/48 is reserved for benchmarking", id="in benchmarking"),
        pytest.param("2001:10::1", "2001:10::/28 is ORCHID", id="ORCHID"),
        pytest.param("2001:20::/48", "2001:20::/28 is ORCHIDv2", id="ORCHIDv2"),
        pytest.param("2001:1::1", "2001::/23 is reserved for IETF protocol assignments", id="IETF"),
        pytest.param("2002:cb00:7107::1", "2002::/16 is 6to4 (RFC 3056", id="6to4"),
        pytest.param("2002:cb00:7107::/48", "list 203.0.113.7 instead", id="6to4 site"),
        pytest.param(
            "192.88.99.1", "192.88.99.0/24 is the deprecated 6to4 relay anycast", id="6to4 relay v4"
        ),
        pytest.param("64:ff9b::cb00:7107", "64:ff9b::/96 is the NAT64 prefix (RFC 6052)", id="NAT64"),
        pytest.param("64:ff9b::cb00:7107", "stand for IPv4 hosts; list 203.0.113.7 instead", id="NAT64 hint"),
        pytest.param("64:ff9b:1::1", "64:ff9b:1::/48 is reserved for local NAT64", id="local NAT64"),
        pytest.param("100::1", "100::/64 is a discard prefix", id="discard"),
        pytest.param("4000::1", "only global unicast IPv6", id="not global unicast"),
    ],
)
def test_ipv6_special_purpose_ranges_are_refused(entry: str, says: str) -> None:
    with pytest.raises(InvalidEntry) as refused:
        normalize_ip(entry)
    assert str(refused.value).startswith(f"'{entry}' is not a static public address: ")
    assert says in str(refused.value)
    # As for private IPv4, the admin may override (on-premises tunnels and translators).
    assert normalize_ip(entry, allow_private=True).stored == entry


@pytest.mark.promise("P-IP-ENTRIES")
def test_a_network_reaching_into_a_refused_range_names_it() -> None:
    with pytest.raises(InvalidEntry, match=r"it includes 192\.88\.99\.0/24, which is the deprecated 6to4"):
        normalize_ip("192.88.0.0/16")


@pytest.mark.promise("P-IP-ENTRIES")
@pytest.mark.parametrize(
    "entry",
    ["192.0.2.1", "198.51.100.0/24", "203.0.113.7", "2001:db8::1", "2001:db8:1::/48", "3fff::1"],
)
def test_documentation_ranges_are_accepted_alike_for_ipv4_and_ipv6(entry: str) -> None:
    assert normalize_ip(entry).stored == entry


# ------------------------------------------------------------------------------ public suffixes


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("*.com", "'\\*.com' would admit every site under com, a public suffix: list the exact host"),
        ("*.co.uk", "every site under co.uk, a public suffix"),
        ("*.github.io", "'\\*.github.io' would admit every site under github.io, a public suffix"),
        ("*.s3.amazonaws.com", "every site under s3.amazonaws.com, a public suffix"),
        ("https://*.com", "every site under com"),
        ("*.com:8443", "every site under com"),
        ("*.Co.Uk.", "every site under co.uk"),
        ("*.рф", "every site under xn--p1ai, a public suffix"),
        ("*.lan", "every site under lan, a top-level domain"),
        ("com", "'com' is a public suffix, which no single site owns: list the exact host"),
        ("co.uk", "is a public suffix"),
        ("github.io", "'github.io' is a public suffix"),
        ("https://github.io", "is a public suffix"),
    ],
)
def test_public_suffixes_and_wildcards_over_them_are_refused(entry: str, says: str) -> None:
    with pytest.raises(InvalidEntry, match=says):
        normalize_domain(entry)


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.parametrize(
    "entry",
    [
        "*.example.github.io",
        "*.example.co.uk",
        "*.example.com",
        "*.city.kawasaki.jp",  # an exception rule of the list: not a public suffix
        "*.localhost",
        "*.test",
        "example.github.io",
        "localhost",
        "intranet",
        "app.test",
    ],
)
def test_entries_below_a_public_suffix_are_accepted(entry: str) -> None:
    assert normalize_domain(entry).stored == entry


def test_the_public_suffix_list_stays_off_the_request_path() -> None:
    probe = "import sys, validator, validator.web.middleware; print('publicsuffixlist' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


# ------------------------------------------------------------------------------ removal


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
@pytest.mark.parametrize(
    ("entries", "stored", "removed"),
    [
        pytest.param(["2606:4700:0:0::1111"], ["2606:4700::1111"], {"2606:4700::1111"}, id="other spelling"),
        pytest.param(["2606:4700::1111%eth0"], ["2606:4700::1111"], {"2606:4700::1111"}, id="zone typed"),
        pytest.param(
            ["2606:4700::1111"],
            ["2606:4700::1111%eth0", "2606:4700::1111%eth1", "2606:4700:0::1111"],
            {"2606:4700::1111", "2606:4700::1111%eth0", "2606:4700::1111%eth1", "2606:4700:0::1111"},
            id="stored as typed by an older version",
        ),
        pytest.param(["::ffff:203.0.113.7"], ["203.0.113.7"], {"203.0.113.7"}, id="mapped"),
        pytest.param(["2000::/3"], ["2000::/3"], {"2000::/3"}, id="stored before the size rule"),
        pytest.param(["2001::1"], ["2001::1"], {"2001::1"}, id="stored before the Teredo rule"),
        pytest.param(["not-an-ip"], ["not-an-ip", "203.0.113.7"], {"not-an-ip"}, id="stored by hand"),
    ],
)
def test_ip_removals_find_an_entry_however_it_was_typed_or_stored(
    entries: list[str], stored: list[str], removed: set[str]
) -> None:
    assert set(ip_removals(entries, stored)) == removed


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
@pytest.mark.parametrize(
    ("entries", "stored"),
    [(["not-an-ip"], ["203.0.113.7"]), (["203.0.113.7/24"], []), ([""], [])],
)
def test_ip_removals_refuse_text_that_is_neither_an_ip_nor_stored(
    entries: list[str], stored: list[str]
) -> None:
    with pytest.raises(InvalidEntry, match="nothing was changed"):
        ip_removals(entries, stored)


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
def test_canonical_forms_apply_no_policy() -> None:
    assert canonical_domain("*.com").stored == "*.com"
    assert canonical_ip("2000::/3").stored == "2000::/3"
    assert canonical_ip("2606:4700::1111%eth0").stored == "2606:4700::1111"


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
async def test_removing_an_address_removes_every_stored_form_of_it() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    admin = Admin.from_url(url)
    await admin.enable(TOKEN, "ip")
    await admin.add_ips(TOKEN, ["2606:4700::1111", "203.0.113.7"])
    # What an older version stored for `ips add ... 2606:4700:0::1111%eth0` and friends.
    await admin.store.write(
        admin.token_hash(TOKEN), "add", "i", "2606:4700::1111%eth0", "2606:4700:0::1111%eth1"
    )
    async with Validator.from_url(url) as validator:
        assert (await validator.check(TOKEN, client_ip="2606:4700::1111")).allowed
        change = await admin.remove_ips(TOKEN, ["2606:4700:0:0::1111%eth2"])
        assert change.restrictions is not None
        assert change.restrictions.ips == ["203.0.113.7"]
        assert not (await validator.check(TOKEN, client_ip="2606:4700::1111")).allowed
    await admin.close()


@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
async def test_entries_stored_before_the_rules_stay_removable() -> None:
    admin = Admin.from_url(f"memory://{uuid.uuid4().hex}")
    await admin.store.write(admin.token_hash(TOKEN), "add", "d", "*.com", "app.example.com")
    change = await admin.remove_domains(TOKEN, ["*.COM"])
    assert change.restrictions is not None
    assert change.restrictions.domains == ["app.example.com"]
    await admin.close()


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.promise("P-REFUSAL-WRITES-NOTHING")
@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda admin: admin.add_ips(TOKEN, ["2606:4700::1111%eth0"]), id="add"),
        pytest.param(lambda admin: admin.set_ips(TOKEN, ["2001::/32"]), id="set"),
        pytest.param(lambda admin: admin.add_domains(TOKEN, ["*.github.io"]), id="add domain"),
    ],
)
async def test_admin_writes_refuse_what_the_rules_refuse(write: Callable[[Admin], Awaitable[object]]) -> None:
    admin = Admin.from_url(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(InvalidEntry):
        await write(admin)
    assert await admin.get(TOKEN) is None
    await admin.close()


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
def test_import_applies_the_admin_minimum_prefix() -> None:
    strict = Admin.from_url("memory://")
    line = ImportLine(token=TOKEN, ip_enabled=True, ips=["11.0.0.0/8"])
    with pytest.raises(InvalidEntry, match="network too large"):
        strict.prepare(line)
    loose = Admin.from_url("memory://", min_prefix_v4=8)
    assert loose.prepare(line).restrictions.ips == ["11.0.0.0/8"]
    with pytest.raises(InvalidEntry, match="zone identifier"):
        loose.prepare(ImportLine(token=TOKEN, ips=["2606:4700::1111%eth0"]))


# ------------------------------------------------------------------------------ CLI settings


@pytest.mark.promise("P-NO-PUBLIC-AT-LARGE")
@pytest.mark.parametrize(
    ("flags", "code", "says"),
    [
        pytest.param([], EXIT_REFUSED, "network too large: /8 covers 16,777,216 addresses", id="default"),
        pytest.param(["--min-prefix-v4", "8"], EXIT_OK, "11.0.0.0/8", id="lowered"),
        pytest.param(
            ["--min-prefix-v4", "40"], EXIT_USAGE, "min_prefix_v4 must be a prefix length", id="bad"
        ),
    ],
)
def test_cli_min_prefix_options(
    flags: list[str], code: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"memory://{uuid.uuid4().hex}"
    assert main(["ips", "add", TOKEN, "11.0.0.0/8", "--store", store, *flags]) == code
    captured = capsys.readouterr()
    assert says in captured.out + captured.err
    assert "Traceback" not in captured.err
