"""Reading delivery status notifications (RFC 3464) and abuse reports (ARF, RFC 5965)."""

from __future__ import annotations

import pytest

from tasks.bounces.reports import (
    MAX_DIAGNOSTIC,
    MAX_RECIPIENTS,
    MalformedReport,
    Report,
    ReportedRecipient,
    read_report,
)
from tests.support.paths import FIXTURES

FIXTURES = FIXTURES / "bounces"
RETURN_PATH = "bounces+c0123.1.abc@bounces.example.com"


def fixture(name: str, recipient: str = "ada@example.net",
            message_id: str = "<original.1@postroom.test>") -> bytes:
    text = (FIXTURES / f"{name}.eml").read_text()
    return text.format(return_path=RETURN_PATH, recipient=recipient,
                       message_id=message_id).encode()


def dsn(*blocks: str, headers: str = f"To: {RETURN_PATH}\n", original: str | None = None,
        original_type: str = "text/rfc822-headers",
        report_type: str = "delivery-status") -> bytes:
    """A multipart/report whose delivery-status part holds *blocks* (blank-line separated)."""
    parts = ["Content-Type: text/plain\n\nYour message could not be delivered.\n",
             "Content-Type: message/delivery-status\n\n" + "\n\n".join(blocks) + "\n"]
    if original is not None:
        parts.append(f"Content-Type: {original_type}\n\n{original}\n")
    body = "".join(f"--b\n{part}" for part in parts) + "--b--\n"
    return (f"From: MAILER-DAEMON@mx.example.org\n{headers}MIME-Version: 1.0\n"
            f"Content-Type: multipart/report; report-type={report_type}; boundary=\"b\"\n\n"
            f"{body}").encode()


PER_MESSAGE = "Reporting-MTA: dns; mx.example.org\nArrival-Date: Tue, 24 Nov 2026 14:00:04 +0000"


def failed(recipient: str, status: str = "5.1.1", action: str = "failed",
           diagnostic: str | None = "smtp; 550 5.1.1 user unknown") -> str:
    block = f"Final-Recipient: rfc822; {recipient}\nAction: {action}\nStatus: {status}"
    return block + (f"\nDiagnostic-Code: {diagnostic}" if diagnostic is not None else "")


def test_a_postfix_bounce_names_the_recipient_status_code_and_original() -> None:
    report = read_report(fixture("postfix"))
    assert report.kind == "delivery-status"
    [recipient] = report.recipients
    assert recipient.email == "ada@example.net"
    assert recipient.action == "failed"
    assert recipient.status == "5.1.1"
    assert recipient.smtp_code == 550
    assert recipient.permanent
    # the "smtp;" type is dropped and the folded value unfolded
    assert recipient.diagnostic == ("550 5.1.1 <ada@example.net>: Recipient address rejected: "
                                    "User unknown in virtual mailbox table")
    assert report.original_message_id == "<original.1@postroom.test>"
    assert report.original_recipients == ["ada@example.net"]
    assert report.return_paths == [RETURN_PATH, RETURN_PATH]  # the To, the original's Return-Path


def test_an_arf_complaint_names_the_complainant_and_the_envelope_sender() -> None:
    report = read_report(fixture("arf"))
    assert report.kind == "feedback-report"
    assert report.recipients == [ReportedRecipient("ada@example.net", "complaint", None,
                                                   "complaint: abuse")]
    assert report.recipients[0].permanent
    assert RETURN_PATH in report.return_paths  # Original-Mail-From
    assert report.original_message_id == "<original.1@postroom.test>"


def test_an_arf_report_without_original_rcpt_to_complains_of_the_originals_to() -> None:
    raw = fixture("arf").replace(b"Original-Rcpt-To: <ada@example.net>\n", b"")
    assert b"Original-Rcpt-To" not in raw
    report = read_report(raw)
    assert [(r.email, r.action) for r in report.recipients] == [("ada@example.net",
                                                                 "complaint")]


def test_the_feedback_type_is_kept_in_the_diagnostic() -> None:
    raw = fixture("arf").replace(b"Feedback-Type: abuse", b"Feedback-Type: Fraud")
    assert read_report(raw).recipients[0].diagnostic == "complaint: fraud"


@pytest.mark.parametrize("raw", [
    b"From: ada@example.net\nSubject: hello\n\nJust a letter.\n",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhi\n--b--\n",
    b"",
])
def test_mail_that_is_not_a_report_is_unknown(raw: bytes) -> None:
    report = read_report(raw)
    assert report == Report("unknown")


def test_a_report_of_another_type_is_unknown() -> None:
    report = read_report(dsn(failed("ada@example.net"), report_type="disposition-notification"))
    assert report.kind == "unknown"


def test_the_per_message_fields_are_not_a_recipient_and_every_recipient_is_read() -> None:
    report = read_report(dsn(PER_MESSAGE, failed("ada@example.net"),
                             failed("bob@example.net", "4.2.2", "delayed",
                                    "smtp; 452 4.2.2 mailbox full")))
    assert [(r.email, r.action, r.status, r.smtp_code) for r in report.recipients] == [
        ("ada@example.net", "failed", "5.1.1", 550),
        ("bob@example.net", "delayed", "4.2.2", 452)]


@pytest.mark.parametrize(("action", "status", "permanent"), [
    ("failed", "5.1.1", True),
    ("failed", "4.4.1", True),  # the relay gave up (Postfix's queue expiry)
    ("delayed", "4.4.1", False),
    ("delivered", "2.0.0", False),
    ("relayed", "2.0.0", False),
])
def test_permanent_means_failed_whatever_the_status_class(action: str, status: str,
                                                          permanent: bool) -> None:
    [recipient] = read_report(dsn(failed("ada@example.net", status, action))).recipients
    assert recipient.permanent is permanent


def test_action_is_lowercased_and_original_recipient_is_a_fallback() -> None:
    block = "Original-Recipient: rfc822;<ada@example.net>\nAction: FAILED\nStatus: 5.0.0"
    [recipient] = read_report(dsn(block)).recipients
    assert (recipient.email, recipient.action, recipient.status) == ("ada@example.net",
                                                                     "failed", "5.0.0")
    assert recipient.diagnostic is None and recipient.smtp_code is None


def test_a_recipient_without_an_address_is_skipped() -> None:
    report = read_report(dsn("Final-Recipient: rfc822; not-an-address\nAction: failed",
                             failed("ada@example.net")))
    assert [r.email for r in report.recipients] == ["ada@example.net"]


def test_a_diagnostic_without_codes_and_a_status_without_one() -> None:
    [recipient] = read_report(dsn(failed("ada@example.net", "unknown", "failed",
                                         "X-Local; mailbox is on holiday"))).recipients
    assert recipient.status is None
    assert recipient.smtp_code is None
    assert recipient.diagnostic == "mailbox is on holiday"


def test_a_long_diagnostic_is_cut() -> None:
    [recipient] = read_report(dsn(failed("ada@example.net",
                                         diagnostic="smtp; 550 " + "x" * 5000))).recipients
    assert recipient.diagnostic is not None
    assert len(recipient.diagnostic) == MAX_DIAGNOSTIC
    assert recipient.smtp_code == 550


def test_only_the_first_max_recipients_are_read() -> None:
    blocks = [failed(f"r{n}@example.net") for n in range(MAX_RECIPIENTS + 50)]
    report = read_report(dsn(*blocks))
    assert [r.email for r in report.recipients] == [f"r{n}@example.net"
                                                    for n in range(MAX_RECIPIENTS)]


def test_return_paths_are_capped() -> None:
    many = ", ".join(f"b{n}@bounces.example.com" for n in range(MAX_RECIPIENTS + 20))
    report = read_report(dsn(failed("ada@example.net"), headers=f"To: {many}\n"))
    assert len(report.return_paths) == MAX_RECIPIENTS
    assert report.return_paths[0] == "b0@bounces.example.com"


def test_delivered_to_and_x_original_to_name_where_the_report_went() -> None:
    headers = ("Delivered-To: bounces+one@bounces.example.com\n"
               "X-Original-To: bounces+two@bounces.example.com\n"
               "To: Postmaster <bounces+three@bounces.example.com>\n")
    report = read_report(dsn(failed("ada@example.net"), headers=headers))
    assert report.return_paths == ["bounces+one@bounces.example.com",
                                   "bounces+two@bounces.example.com",
                                   "bounces+three@bounces.example.com"]


def test_the_original_envelope_id_is_xtext_decoded() -> None:
    per_message = PER_MESSAGE + "\nOriginal-Envelope-Id: c0123+2E1+2Eabcdef"
    report = read_report(dsn(per_message, failed("ada@example.net")))
    assert report.envelope_id == "c0123.1.abcdef"


def test_no_envelope_id_is_none() -> None:
    assert read_report(dsn(PER_MESSAGE, failed("ada@example.net"))).envelope_id is None


def test_a_returned_message_rfc822_gives_the_message_id_and_recipients() -> None:
    original = ("Return-Path: <bounces+x@bounces.example.com>\n"
                "From: news@example.org\nTo: ada@example.net, Bob <bob@example.net>\n"
                "Message-ID:\n <folded.7@postroom.test>\nSubject: hi\n\nHello.")
    report = read_report(dsn(failed("ada@example.net"), original=original,
                             original_type="message/rfc822"))
    assert report.original_message_id == "<folded.7@postroom.test>"
    assert report.original_recipients == ["ada@example.net", "bob@example.net"]
    assert "bounces+x@bounces.example.com" in report.return_paths


def test_the_fixtures_from_other_mtas_are_read() -> None:
    for name in ("exim", "provider", "delayed"):
        report = read_report(fixture(name))
        assert report.kind == "delivery-status", name
        assert [r.email for r in report.recipients] == ["ada@example.net"], name
    assert not read_report(fixture("delayed")).recipients[0].permanent


def test_mime_the_email_package_cannot_read_raises_malformed_report() -> None:
    nested = b"MIME-Version: 1.0\r\n" + b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(3000))
    with pytest.raises(MalformedReport, match="cannot be read") as raised:
        read_report(nested)
    assert isinstance(raised.value, ValueError)  # callers answer it as bad input
    assert isinstance(raised.value.__cause__, RecursionError)


@pytest.mark.parametrize("action", ["delayed", "failed"])  # failed: Postfix's queue expiry
def test_a_diagnostic_without_an_smtp_reply_has_no_smtp_code(action: str) -> None:
    diagnostic = ("X-Postfix; connect to mail.example.net[203.0.113.7]:25: "
                  "Connection timed out")
    [recipient] = read_report(dsn(failed("ada@example.net", "4.4.1", action,
                                         diagnostic))).recipients
    assert recipient.diagnostic == diagnostic.split("; ", 1)[1]
    assert recipient.smtp_code is None


def test_the_code_the_relay_said_is_the_smtp_code_not_its_address() -> None:
    diagnostic = "smtp; host mail.example.net[203.0.113.7] said: 554 5.7.1 rejected"
    [recipient] = read_report(dsn(failed("ada@example.net", "5.7.1", "failed",
                                         diagnostic))).recipients
    assert recipient.smtp_code == 554
