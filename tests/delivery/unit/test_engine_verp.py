"""VERP return paths and DSN envelope ids: signed tokens that name a delivery's recipient."""

from __future__ import annotations

import re

import pytest

from tasks.delivery.engine.verp import (
    BounceRef,
    envid_for,
    envid_in,
    is_return_path_address,
    read_envid,
    read_verp,
    verp_address,
    xtext,
    xtext_decode,
)

SECRET = "test-secret-key"
RETURN_PATH = "bounces@bounces.example.com"
CAMPAIGN = "0123456789abcdef0123456789abcdef"
MESSAGE = "fedcba9876543210fedcba9876543210"

REFS = [BounceRef("campaign", CAMPAIGN, 7), BounceRef("message", MESSAGE, None),
        BounceRef("message", MESSAGE, 0), BounceRef("campaign", CAMPAIGN, 999_999_999)]


@pytest.mark.parametrize("ref", REFS, ids=["campaign", "message", "message.0", "largest"])
def test_a_verp_address_reads_back_as_what_it_names(ref: BounceRef) -> None:
    address = verp_address(RETURN_PATH, SECRET, ref)
    assert read_verp(address, RETURN_PATH, SECRET) == ref


def test_the_address_is_the_return_path_with_a_plus_token() -> None:
    address = verp_address(RETURN_PATH, SECRET, BounceRef("campaign", CAMPAIGN, 3))
    assert re.fullmatch(rf"bounces\+c{CAMPAIGN}\.3\.[0-9a-f]{{10}}@bounces\.example\.com",
                        address)
    message = verp_address(RETURN_PATH, SECRET, BounceRef("message", MESSAGE, None))
    assert re.fullmatch(rf"bounces\+m{MESSAGE}\.[0-9a-f]{{10}}@bounces\.example\.com", message)


def test_each_recipient_gets_its_own_address() -> None:
    addresses = {verp_address(RETURN_PATH, SECRET, BounceRef("campaign", CAMPAIGN, n))
                 for n in range(50)}
    assert len(addresses) == 50


def test_read_verp_ignores_case_angle_brackets_and_spaces() -> None:
    address = verp_address(RETURN_PATH, SECRET, BounceRef("campaign", CAMPAIGN, 12))
    assert read_verp(f"  <{address.upper()}> ", RETURN_PATH, SECRET) == \
        BounceRef("campaign", CAMPAIGN, 12)


def test_another_secret_does_not_verify() -> None:
    address = verp_address(RETURN_PATH, "another-secret", BounceRef("campaign", CAMPAIGN, 1))
    assert read_verp(address, RETURN_PATH, SECRET) is None


def test_a_token_moved_to_another_recipient_is_refused() -> None:
    """Nobody can forge a bounce for another recipient: the signature covers the index."""
    address = verp_address(RETURN_PATH, SECRET, BounceRef("campaign", CAMPAIGN, 1))
    forged = address.replace(f"{CAMPAIGN}.1.", f"{CAMPAIGN}.2.")
    assert forged != address
    assert read_verp(forged, RETURN_PATH, SECRET) is None


def test_a_campaign_token_cannot_be_read_as_a_message() -> None:
    address = verp_address(RETURN_PATH, SECRET, BounceRef("campaign", CAMPAIGN, 1))
    assert read_verp(address.replace("+c", "+m"), RETURN_PATH, SECRET) is None


@pytest.mark.parametrize("address", [
    "bounces@bounces.example.com",  # the bare return path names nothing
    f"bounces+c{CAMPAIGN}.1@bounces.example.com",  # no signature
    f"bounces+x{CAMPAIGN}.1.0123456789@bounces.example.com",  # no such kind
    f"bounces+c{CAMPAIGN[:-1]}.1.0123456789@bounces.example.com",  # short id
    f"bounces+c{CAMPAIGN}.1234567890.0123456789@bounces.example.com",  # index too long
    "bounces+@bounces.example.com",
    "",
    "not an address",
])
def test_what_is_not_a_token_reads_as_none(address: str) -> None:
    assert read_verp(address, RETURN_PATH, SECRET) is None


def test_a_genuine_token_at_another_address_is_refused() -> None:
    address = verp_address(RETURN_PATH, SECRET, BounceRef("campaign", CAMPAIGN, 1))
    token = address.split("@")[0].partition("+")[2]
    assert read_verp(f"bounces+{token}@elsewhere.example.com", RETURN_PATH, SECRET) is None
    assert read_verp(f"other+{token}@bounces.example.com", RETURN_PATH, SECRET) is None


@pytest.mark.parametrize(("address", "expected"), [
    ("bounces@bounces.example.com", True),
    ("BOUNCES@Bounces.Example.COM", True),
    ("<bounces+anything@bounces.example.com>", True),
    ("bounces+@bounces.example.com", True),
    ("bouncesx@bounces.example.com", False),
    ("bounces@example.com", False),
    ("ada@bounces.example.com", False),
    ("", False),
])
def test_is_return_path_address(address: str, expected: bool) -> None:
    assert is_return_path_address(address, RETURN_PATH) is expected


@pytest.mark.parametrize("ref", REFS, ids=["campaign", "message", "message.0", "largest"])
def test_an_envid_is_the_verp_token_and_reads_back(ref: BounceRef) -> None:
    envid = envid_for(ref, SECRET)
    address = verp_address(RETURN_PATH, SECRET, ref)
    assert address == f"bounces+{envid}@bounces.example.com"
    assert read_envid(envid, SECRET) == ref
    assert read_envid(f"  {envid.upper()}\n", SECRET) == ref


def test_read_envid_refuses_a_bad_signature_or_shape() -> None:
    envid = envid_for(BounceRef("campaign", CAMPAIGN, 4), SECRET)
    assert read_envid(envid, "another-secret") is None
    assert read_envid(envid.replace(".4.", ".5."), SECRET) is None
    assert read_envid(envid[:-1], SECRET) is None
    assert read_envid("", SECRET) is None


def test_read_envid_takes_the_xtext_form() -> None:
    envid = envid_for(BounceRef("message", MESSAGE, 2), SECRET)
    encoded = "".join(f"+{ord(c):02X}" if c == "." else c for c in envid)
    assert "." not in encoded
    assert read_envid(encoded, SECRET) == BounceRef("message", MESSAGE, 2)


def test_envid_in_gives_the_token_of_a_verp_sender_only() -> None:
    ref = BounceRef("campaign", CAMPAIGN, 9)
    address = verp_address(RETURN_PATH, SECRET, ref)
    assert envid_in(address) == envid_for(ref, SECRET)
    assert envid_in(f"<{address}>") == envid_for(ref, SECRET)
    assert envid_in("noreply@postroom.test") is None
    assert envid_in("ada+news@example.com") is None  # a plus address is not a VERP one
    assert envid_in("") is None


@pytest.mark.parametrize(("value", "encoded"), [
    ("plain-token.1", "plain-token.1"),
    ("a+b=c", "a+2Bb+3Dc"),
    ("two words", "two+20words"),
    ("tab\there", "tab+09here"),
    ("caf\u00e9", "caf+C3+A9"),
    ("", ""),
])
def test_xtext_encodes_plus_equals_controls_spaces_and_non_ascii(value: str,
                                                                 encoded: str) -> None:
    assert xtext(value) == encoded


@pytest.mark.parametrize("value", ["a+b=c", "two words", "!~ edge+=", "c0123.4.abcdef0123"])
def test_xtext_decode_inverts_xtext_for_ascii(value: str) -> None:
    assert xtext_decode(xtext(value)) == value


def test_xtext_decode_leaves_what_is_not_an_escape() -> None:
    assert xtext_decode("a+zz+4") == "a+zz+4"
    assert xtext_decode("+2b+2B") == "++"


def test_an_index_written_with_a_leading_zero_is_refused() -> None:
    address = verp_address(RETURN_PATH, SECRET, BounceRef("campaign", CAMPAIGN, 7))
    padded = address.replace(f"{CAMPAIGN}.7.", f"{CAMPAIGN}.07.")
    assert padded != address
    assert read_verp(padded, RETURN_PATH, SECRET) is None


def test_tokens_of_many_secrets_each_verify_under_their_own_only() -> None:
    """More secrets than the keyed HMACs kept: none is signed or checked with another's."""
    ref = BounceRef("campaign", CAMPAIGN, 5)
    secrets = [f"secret-{n}" for n in range(20)]
    addresses = [verp_address(RETURN_PATH, secret, ref) for secret in secrets]
    assert len(set(addresses)) == len(secrets)
    for secret, address in zip(secrets, addresses, strict=True):
        assert read_verp(address, RETURN_PATH, secret) == ref
        assert read_envid(envid_for(ref, secret), secret) == ref
    assert read_verp(addresses[0], RETURN_PATH, secrets[1]) is None


def test_the_return_paths_local_part_and_domain_are_matched_without_case() -> None:
    address = verp_address(RETURN_PATH, SECRET, BounceRef("message", MESSAGE, None))
    assert read_verp(address, "Bounces@BOUNCES.example.com", SECRET) == \
        BounceRef("message", MESSAGE, None)


def test_read_envid_takes_lowercase_xtext_escapes() -> None:
    envid = envid_for(BounceRef("campaign", CAMPAIGN, 3), SECRET)
    assert read_envid(envid.replace(".", "+2e"), SECRET) == BounceRef("campaign", CAMPAIGN, 3)


def test_envid_in_passes_a_token_on_without_verifying_it() -> None:
    """The engine only copies the token to ENVID; the bounce desk verifies what comes back."""
    forged = f"bounces+c{CAMPAIGN}.1.0123456789@bounces.example.com"
    assert envid_in(forged) == f"c{CAMPAIGN}.1.0123456789"
    assert read_envid(f"c{CAMPAIGN}.1.0123456789", SECRET) is None


def test_a_return_path_with_a_plus_in_its_local_part_reads_back() -> None:
    return_path = "bounces+postroom@bounces.example.com"
    ref = BounceRef("campaign", CAMPAIGN, 1)
    address = verp_address(return_path, SECRET, ref)
    assert is_return_path_address(return_path, return_path)
    assert read_verp(address, return_path, SECRET) == ref
