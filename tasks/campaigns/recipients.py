"""Reading a campaign's recipients: a CSV upload as a stream, or a JSON list.

Rows come out one at a time as :class:`Row` (where it was, its address, its
variables), so a million-row file never sits in memory. Whether a row is good
is decided by :func:`check_row`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError

from tasks.shared.mailbox import checked_address, special_use_allowed
from web.api.errors import APIError

EMAIL_COLUMN = "email"
MAX_VARIABLE_CHARS = 10_000

# Plain ASCII addresses (most of any list) are checked by this pattern, which accepts
# only what email_validator accepts, unchanged but for the domain's case; anything
# else (quoting, IDNA, odd TLDs) goes to email_validator itself. It is four times faster.
_PLAIN_ADDRESS = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})")


@dataclass(frozen=True, slots=True)
class Row:
    """One recipient as given: ``location`` is a CSV line number or a list position."""

    location: int
    email: Any
    variables: dict[str, Any]
    problem: str | None = None


class RecipientSource:
    """Rows from somewhere, and the variable names every row has (if known up front)."""

    location_name = "line"
    columns: frozenset[str] | None = None

    def __iter__(self) -> Iterator[Row]:
        raise NotImplementedError


class CSVRecipients(RecipientSource):
    """A CSV file with an ``email`` column, read as UTF-8 (with or without a BOM)."""

    def __init__(self, binary: IO[bytes]) -> None:
        self.text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        self.reader = csv.reader(self.text)
        header = self._read(lambda: next(self.reader, None))
        if header is None or not any(name.strip() for name in header):
            raise APIError(422, "empty_file", "the CSV file is empty: it needs a header "
                           "row with an 'email' column", {"file": "empty"})
        self.header = [name.strip() for name in header]
        lowered = [name.lower() for name in self.header]
        if EMAIL_COLUMN not in lowered:
            shown = ", ".join(repr(name) for name in self.header[:20])
            raise APIError(422, "no_email_column", "the CSV file has no 'email' column",
                           {"file": f"no 'email' column in the header row ({shown})"})
        self.email_at = lowered.index(EMAIL_COLUMN)
        self.columns = frozenset(name for name in self.header if name)

    def _read(self, step: Any) -> Any:
        try:
            return step()
        except UnicodeDecodeError:
            line = self.reader.line_num + 1  # decoding runs ahead in blocks: "from here on"
            raise APIError(422, "not_utf8", f"the CSV file is not UTF-8 (from line {line} on)",
                           {"file": f"not valid UTF-8 from line {line} on; save it as UTF-8"}
                           ) from None
        except csv.Error as err:
            line = self.reader.line_num
            raise APIError(422, "bad_csv", f"the CSV file cannot be read at line {line}: {err}",
                           {"file": f"line {line}: {err}"}) from None

    def __iter__(self) -> Iterator[Row]:
        width = len(self.header)
        while True:
            values = self._read(lambda: next(self.reader, None))
            if values is None:
                return
            if not values or not any(value.strip() for value in values):
                continue  # blank line
            line = self.reader.line_num
            if len(values) > width:
                yield Row(line, None, {}, f"{len(values)} fields but the header has {width}")
                continue
            values += [""] * (width - len(values))
            variables = {name: value for name, value in zip(self.header, values, strict=True)
                         if name and name.lower() != EMAIL_COLUMN}
            yield Row(line, values[self.email_at].strip(), variables)


class JSONRecipients(RecipientSource):
    """``[{"email": ..., "name": ...}, ...]`` from a JSON body (positions from 0)."""

    location_name = "index"

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[Row]:
        for position, item in enumerate(self.items):
            if not isinstance(item, dict):
                yield Row(position, None, {}, "must be an object with an 'email' key")
                continue
            variables = {k: v for k, v in item.items() if k != EMAIL_COLUMN}
            problem = None
            for name, value in variables.items():
                if value is not None and not isinstance(value, str | int | float | bool):
                    problem = f"variable {name!r} must be a string, number or boolean"
            yield Row(position, item.get(EMAIL_COLUMN), variables, problem)


def normalised_address(value: str) -> str:
    """The address as email_validator normalises it; :class:`EmailNotValidError` if invalid."""
    plain = _PLAIN_ADDRESS.fullmatch(value)
    if plain is not None and len(value) <= 254 and len(plain["local"]) <= 64:
        domain = plain["domain"].lower()
        if "--" not in domain and not any(domain == name or domain.endswith("." + name)
                                          for name in SPECIAL_USE_DOMAIN_NAMES):
            return f"{plain['local']}@{domain}"
    return str(checked_address(value, strip=False, special_use=special_use_allowed()).normalized)


def check_row(row: Row, required: frozenset[str]) -> tuple[str | None, str | None]:
    """``(normalised address, None)`` for a good row, ``(None, reason)`` for a bad one."""
    if row.problem:
        return None, row.problem
    if row.email is None or (isinstance(row.email, str) and not row.email.strip()):
        return None, "missing email"
    if not isinstance(row.email, str):
        return None, "email must be a string"
    try:
        address = normalised_address(row.email)
    except EmailNotValidError as err:
        return None, f"invalid email {row.email[:100]!r}: {err}"
    missing = sorted(name for name in required if name not in row.variables)
    if missing:
        return None, f"missing variable {missing[0]!r} used by the templates"
    for name, value in row.variables.items():
        if isinstance(value, str) and len(value) > MAX_VARIABLE_CHARS:
            return None, f"variable {name!r} is longer than {MAX_VARIABLE_CHARS} characters"
    return address, None
