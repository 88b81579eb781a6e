"""Reading recipient lists: the CSV reader and the address check, without the app."""

from __future__ import annotations

import io

import pytest
from email_validator import EmailNotValidError, validate_email

from tasks.campaigns.recipients import CSVRecipients, normalised_address
from tasks.shared.errors import Invalid

ADDRESSES = ["Ada.Lovelace@Example.COM", "o'brien+news@mail.example.co.uk", "x@a.b",
             "x@foo.test", "x@sub.example.invalid", "a..b@example.com", "x@xn--bcher-kva.example",
             "x@ab--cd.com", "\"quoted\"@example.com", "zoë@example.com", "x@123.com",
             "x@example.c0m", "x@-bad.com", "@example.com", "x@", "x" * 65 + "@example.com",
             "x@" + "a" * 64 + ".com", "a@b@example.com", "x@localhost", "x@EXAMPLE.onion"]


@pytest.mark.parametrize("address", ADDRESSES)
def test_address_check_agrees_with_email_validator(address: str) -> None:
    try:
        expected: str | None = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalised_address(address)
    except EmailNotValidError:
        got = None
    assert got == expected


def test_csv_reader_takes_bom_case_and_whitespace_in_the_header() -> None:
    data = "\ufeff Email ,First Name,city\r\nada@example.com,Ada,\"London, UK\"\r\n"
    source = CSVRecipients(io.BytesIO(data.encode("utf-8")))
    assert source.columns == frozenset({"Email", "First Name", "city"})
    [row] = list(source)
    assert (row.location, row.email, row.variables) == (
        2, "ada@example.com", {"First Name": "Ada", "city": "London, UK"})


def test_short_rows_are_padded_and_long_rows_reported() -> None:
    source = CSVRecipients(io.BytesIO(b"email,name\na@example.com\nb@example.com,B,extra\n"))
    short, long = list(source)
    assert short.variables == {"name": ""} and short.problem is None
    assert long.location == 3 and long.problem == "3 fields but the header has 2"


def test_header_problems_are_422() -> None:
    with pytest.raises(Invalid) as empty:
        CSVRecipients(io.BytesIO(b"\n"))
    assert empty.value.code == "empty_file"
    with pytest.raises(Invalid) as latin:
        CSVRecipients(io.BytesIO("émail\n".encode("latin-1")))
    assert latin.value.code == "not_utf8"
