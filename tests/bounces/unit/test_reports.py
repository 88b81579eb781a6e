"""Reading bounces and complaints built with the standard library's email package.

``test_engine_reports.py`` reads hand-written text and MTA fixtures; here every report
is a real MIME tree (``multipart/report`` with ``message/delivery-status``,
``message/feedback-report``, ``message/rfc822`` and ``text/rfc822-headers`` parts)
serialised by the email package, with LF and with CRLF line ends, as a relay's mail
arrives, and the VERP return path and ``ENVID`` are the ones the engine writes.
"""

from __future__ import annotations

import email.policy
import time
from collections.abc import Mapping, Sequence
from email.message import Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from tasks.bounces.reports import MAX_RECIPIENTS, Report, ReportedRecipient, read_report
from tasks.delivery.engine.verp import (
    BounceRef,
    envid_for,
    read_envid,
    read_verp,
    verp_address,
    xtext,
)

SECRET = "test-secret-key"
RETURN_PATH = "bounces@bounces.example.com"
CAMPAIGN = "0123456789abcdef0123456789abcdef"
REF = BounceRef("campaign", CAMPAIGN, 7)
VERP = verp_address(RETURN_PATH, SECRET, REF)
PER_MESSAGE = {"Reporting-MTA": "dns; mx.example.org",
               "Arrival-Date": "Tue, 24 Nov 2026 14:00:04 +0000"}

Fields = Mapping[str, str | Sequence[str]]


def fields(values: Fields) -> Message:
    """One header block; a sequence gives the field once per value."""
    block = Message()
    for name, value in values.items():
        for one in [value] if isinstance(value, str) else value:
            block[name] = one
    return block


def recipient(address: str, action: str = "failed", status: str = "5.1.1",
              diagnostic: str | None = "smtp; 550 5.1.1 user unknown") -> Fields:
    block = {"Final-Recipient": f"rfc822; {address}", "Action": action, "Status": status}
    return block | ({"Diagnostic-Code": diagnostic} if diagnostic is not None else {})


def delivery_status(*blocks: Fields) -> Message:
    """A ``message/delivery-status`` part: the per-message block, then one per recipient."""
    part = Message()
    part["Content-Type"] = "message/delivery-status"
    part.set_payload([])  # no block at all is written as an empty part
    for block in blocks:
        part.attach(fields(block))
    return part


def original(to: str = "ada@example.net", message_id: str = "<original.1@postroom.test>",
             return_path: str = VERP) -> Message:
    sent = fields({"Return-Path": f"<{return_path}>", "From": "news@postroom.test", "To": to,
                   "Message-ID": message_id, "Subject": "Our news"})
    sent.set_payload("Hello.\n")
    return sent


def report(*parts: Message, report_type: str = "delivery-status", to: str = VERP,
           explanation: str = "Your message could not be delivered.") -> MIMEMultipart:
    mail = MIMEMultipart("report", report_type=report_type)
    mail["From"] = "MAILER-DAEMON@mx.example.org"
    mail["To"] = to
    mail["Subject"] = "Undelivered Mail Returned to Sender"
    mail.attach(MIMEText(explanation))
    for part in parts:
        mail.attach(part)
    return mail


def headers_only(sent: Message) -> MIMEText:
    """The original's headers as ``text/rfc822-headers`` (``RET=HDRS``)."""
    return MIMEText("".join(f"{name}: {value}\n" for name, value in sent.items()),
                    "rfc822-headers")


@pytest.fixture(params=["lf", "crlf"])
def as_bytes(request: pytest.FixtureRequest) -> email.policy.Policy:
    """The policy the report is written with: LF line ends, or CRLF as on the wire."""
    return email.policy.compat32 if request.param == "lf" else email.policy.SMTP


def read(mail: Message, policy: email.policy.Policy = email.policy.compat32) -> Report:
    return read_report(mail.as_bytes(policy=policy))


# -- delivery status notifications (RFC 3464)


def test_a_permanent_failure_names_the_recipient_the_codes_and_the_original(
        as_bytes: email.policy.Policy) -> None:
    mail = report(delivery_status(PER_MESSAGE, recipient("ada@example.net")),
                  MIMEMessage(original()))
    found = read(mail, as_bytes)
    assert found.kind == "delivery-status"
    assert found.recipients == [ReportedRecipient("ada@example.net", "failed", "5.1.1",
                                                  "550 5.1.1 user unknown", 550)]
    assert found.recipients[0].permanent
    assert found.original_message_id == "<original.1@postroom.test>"
    assert found.original_recipients == ["ada@example.net"]
    assert found.return_paths == [VERP, VERP]  # the report's To, the original's Return-Path


@pytest.mark.parametrize(("action", "status", "diagnostic", "code", "permanent"), [
    ("failed", "5.2.2", "smtp; 552 5.2.2 mailbox full", 552, True),
    ("failed", "5.7.1", "smtp; 554 5.7.1 rejected by policy", 554, True),
    ("delayed", "4.2.2", "smtp; 452 4.2.2 mailbox full", 452, False),
    ("delayed", "4.4.7", "X-Postfix; delivery temporarily suspended", None, False),
    ("failed", "4.4.7", "X-Postfix; message expired in the queue", None, True),  # gave up
])
def test_the_5xx_and_4xx_cases(action: str, status: str, diagnostic: str, code: int | None,
                               permanent: bool, as_bytes: email.policy.Policy) -> None:
    mail = report(delivery_status(PER_MESSAGE, recipient("ada@example.net", action, status,
                                                         diagnostic)))
    [found] = read(mail, as_bytes).recipients
    assert (found.action, found.status, found.smtp_code) == (action, status, code)
    assert found.diagnostic == diagnostic.split("; ", 1)[1]
    assert found.permanent is permanent


def test_each_recipient_of_one_report_is_read_in_order(as_bytes: email.policy.Policy) -> None:
    mail = report(delivery_status(
        PER_MESSAGE, recipient("ada@example.net"),
        recipient("bob@example.net", "delayed", "4.3.0", "smtp; 451 4.3.0 try later"),
        recipient("cy@example.net", "delivered", "2.0.0", None)))
    assert [(r.email, r.action, r.status, r.smtp_code) for r in read(mail, as_bytes).recipients
            ] == [("ada@example.net", "failed", "5.1.1", 550),
                  ("bob@example.net", "delayed", "4.3.0", 451),
                  ("cy@example.net", "delivered", "2.0.0", None)]


def test_the_verp_return_path_and_the_envid_name_the_delivery(
        as_bytes: email.policy.Policy) -> None:
    per_message = PER_MESSAGE | {"Original-Envelope-Id": xtext(envid_for(REF, SECRET))}
    mail = report(delivery_status(per_message, recipient("ada@example.net")))
    found = read(mail, as_bytes)
    assert found.return_paths == [VERP]
    assert read_verp(found.return_paths[0], RETURN_PATH, SECRET) == REF
    assert found.envelope_id is not None
    assert read_envid(found.envelope_id, SECRET) == REF


def test_an_envid_written_as_xtext_escapes_is_decoded() -> None:
    envid = envid_for(REF, SECRET)
    escaped = envid.replace(".", "+2E")
    mail = report(delivery_status(PER_MESSAGE | {"Original-Envelope-Id": escaped},
                                  recipient("ada@example.net")))
    assert read(mail).envelope_id == envid


def test_a_report_sent_to_the_bare_return_path_still_carries_the_originals_verp() -> None:
    mail = report(delivery_status(PER_MESSAGE, recipient("ada@example.net")),
                  headers_only(original()), to=RETURN_PATH)
    found = read(mail)
    assert found.return_paths == [RETURN_PATH, VERP]
    assert [read_verp(a, RETURN_PATH, SECRET) for a in found.return_paths] == [None, REF]
    assert found.original_message_id == "<original.1@postroom.test>"


def test_the_originals_headers_alone_give_its_message_id_and_recipients(
        as_bytes: email.policy.Policy) -> None:
    sent = original(to="ada@example.net, Bob <bob@example.net>",
                    message_id="<c0123.7@postroom.test>")
    found = read(report(delivery_status(PER_MESSAGE, recipient("ada@example.net")),
                        headers_only(sent)), as_bytes)
    assert found.original_message_id == "<c0123.7@postroom.test>"
    assert found.original_recipients == ["ada@example.net", "bob@example.net"]


@pytest.mark.parametrize(("final_recipient", "address"), [
    ("rfc822; <ada@example.net>", "ada@example.net"),
    ("rfc822;ada@example.net", "ada@example.net"),
    ("ada@example.net", "ada@example.net"),  # no address type
    ("RFC822; Ada@Example.NET", "Ada@Example.NET"),  # kept as the relay wrote it
])
def test_the_final_recipient_forms_relays_write(final_recipient: str, address: str) -> None:
    block = {"Final-Recipient": final_recipient, "Action": "failed", "Status": "5.1.1"}
    [found] = read(report(delivery_status(PER_MESSAGE, block))).recipients
    assert found.email == address


def test_a_status_with_a_comment_and_a_diagnostic_without_a_type() -> None:
    block = recipient("ada@example.net", status="5.1.1 (bad destination mailbox address)",
                      diagnostic="550 5.1.1 user unknown")
    [found] = read(report(delivery_status(PER_MESSAGE, block))).recipients
    assert (found.status, found.smtp_code, found.diagnostic) == ("5.1.1", 550,
                                                                 "550 5.1.1 user unknown")


# -- abuse reports (ARF, RFC 5965)


def feedback(values: Fields) -> Message:
    """A ``message/feedback-report`` part holding *values*."""
    part = Message()
    part["Content-Type"] = "message/feedback-report"
    part.attach(fields({"Feedback-Type": "abuse", "User-Agent": "SomeGenerator/1.0",
                        "Version": "1"} | dict(values)))
    return part


def test_a_complaint_names_each_complainant_and_the_envelope_sender(
        as_bytes: email.policy.Policy) -> None:
    mail = report(feedback({"Original-Mail-From": f"<{VERP}>",
                            "Original-Rcpt-To": ["<ada@example.net>", "<bob@example.net>"]}),
                  MIMEMessage(original()), report_type="feedback-report",
                  to="abuse-reports@postroom.test", explanation="This is an abuse report.")
    found = read(mail, as_bytes)
    assert found.kind == "feedback-report"
    assert found.recipients == [
        ReportedRecipient("ada@example.net", "complaint", None, "complaint: abuse"),
        ReportedRecipient("bob@example.net", "complaint", None, "complaint: abuse")]
    assert all(r.permanent for r in found.recipients)
    assert found.return_paths == ["abuse-reports@postroom.test", VERP, VERP]
    assert read_verp(found.return_paths[1], RETURN_PATH, SECRET) == REF
    assert found.original_message_id == "<original.1@postroom.test>"


def test_a_complaint_without_original_rcpt_to_names_the_originals_to() -> None:
    mail = report(feedback({"Feedback-Type": "Fraud"}),
                  MIMEMessage(original(to="Ada <ada@example.net>")),
                  report_type="feedback-report")
    assert read(mail).recipients == [ReportedRecipient("ada@example.net", "complaint")]


def test_a_complaint_that_names_nobody_anywhere_has_an_addressless_recipient() -> None:
    found = read(report(feedback({}), report_type="feedback-report"))
    assert found.recipients == [ReportedRecipient("", "complaint", None, "complaint: abuse")]
    assert found.original_recipients == []


def test_the_complainants_of_one_report_are_capped() -> None:
    many = [f"<r{n}@example.net>" for n in range(MAX_RECIPIENTS + 30)]
    found = read(report(feedback({"Original-Rcpt-To": many}), report_type="feedback-report"))
    assert [r.email for r in found.recipients] == [f"r{n}@example.net"
                                                   for n in range(MAX_RECIPIENTS)]


# -- what is not a report, and what is broken


def test_a_plain_bounce_in_words_is_unknown() -> None:
    plain = MIMEText("I'm sorry to have to inform you that your message could not be\n"
                     "delivered to one or more recipients.\n\n<ada@example.net>: 550 5.1.1\n")
    plain["From"] = "MAILER-DAEMON@mx.example.org"
    plain["To"] = VERP
    assert read(plain) == Report("unknown")


def test_a_delivery_status_part_outside_a_report_is_not_read() -> None:
    mixed = MIMEMultipart("mixed")
    mixed["To"] = VERP
    mixed.attach(delivery_status(PER_MESSAGE, recipient("ada@example.net")))
    assert read(mixed) == Report("unknown")


def test_an_empty_delivery_status_part_names_nobody() -> None:
    found = read(report(delivery_status()))
    assert (found.kind, found.recipients, found.envelope_id) == ("delivery-status", [], None)
    assert found.return_paths == [VERP]


def test_a_report_with_only_its_explanation_names_nobody() -> None:
    found = read(report())
    assert found == Report("delivery-status", return_paths=[VERP])


def test_blocks_without_a_recipient_address_are_skipped() -> None:
    found = read(report(delivery_status(
        PER_MESSAGE, {"Action": "failed", "Status": "5.0.0"},
        {"Final-Recipient": "rfc822; postmaster", "Action": "failed"},
        recipient("ada@example.net"))))
    assert [r.email for r in found.recipients] == ["ada@example.net"]


@pytest.mark.parametrize("raw", [
    b"Content-Type: multipart/report; report-type=delivery-status\n\nno boundary at all\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
    b"--b\nContent-Type: message/delivery-status\n\n--b--\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b--\n",
])
def test_a_report_with_no_usable_parts_names_nobody(raw: bytes) -> None:
    found = read_report(raw)
    assert found.kind == "delivery-status"
    assert found.recipients == []


def test_a_report_cut_off_mid_part_keeps_what_arrived() -> None:
    raw = report(delivery_status(PER_MESSAGE, recipient("ada@example.net"),
                                 recipient("bob@example.net"))).as_bytes()
    found = read_report(raw[:raw.index(b"bob@example.net")])
    assert [r.email for r in found.recipients] == ["ada@example.net"]


def test_an_empty_returned_message_gives_no_message_id() -> None:
    found = read(report(delivery_status(PER_MESSAGE, recipient("ada@example.net")),
                        MIMEMessage(Message())))
    assert found.original_message_id is None
    assert found.original_recipients == []
    assert [r.email for r in found.recipients] == ["ada@example.net"]


# -- oversized reports: what is read is bounded


def test_the_originals_recipients_are_capped() -> None:
    to = ", ".join(f"r{n}@example.net" for n in range(MAX_RECIPIENTS + 40))
    found = read(report(delivery_status(PER_MESSAGE, recipient("r0@example.net")),
                        headers_only(original(to=to))))
    assert found.original_recipients == [f"r{n}@example.net" for n in range(MAX_RECIPIENTS)]


def test_a_folded_header_of_megabytes_is_read_quickly_and_capped() -> None:
    mail = report(delivery_status(PER_MESSAGE, recipient("ada@example.net")))
    del mail["To"]
    mail["To"] = ",\n ".join(f"b{n}@bounces.example.com" for n in range(40_000))
    raw = mail.as_bytes()
    assert len(raw) > 1_000_000
    started = time.monotonic()
    found = read_report(raw)
    assert time.monotonic() - started < 30  # the default policy's parser takes minutes
    assert len(found.return_paths) == MAX_RECIPIENTS
    assert found.return_paths[0] == "b0@bounces.example.com"
    assert [r.email for r in found.recipients] == ["ada@example.net"]


def test_recipients_are_capped_across_several_delivery_status_parts() -> None:
    blocks = [recipient(f"r{n}@example.net") for n in range(MAX_RECIPIENTS)]
    found = read(report(delivery_status(PER_MESSAGE, *blocks),
                        delivery_status(PER_MESSAGE, *blocks)))
    assert len(found.recipients) <= MAX_RECIPIENTS
