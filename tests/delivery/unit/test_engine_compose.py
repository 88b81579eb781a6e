"""Composer: well-formed MIME, read back with Python's email parser."""

from __future__ import annotations

import email
import email.policy
import socket
from email.message import EmailMessage
from typing import Any

import pytest

from tasks.delivery.engine.compose import Attachment, Composer, Draft
from tasks.delivery.engine.errors import InvalidMessageError

SENDER = "Postroom <noreply@postroom.test>"


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(part: EmailMessage) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def compose(**fields: Any) -> EmailMessage:
    draft = Draft(**{"sender": SENDER, "to": ["ada@example.com"], "subject": "Hi", **fields})
    return parse(Composer(message_id_domain="mail.postroom.test").compose(draft).data)


def test_text_only_is_a_single_text_part() -> None:
    message = compose(text="Hello Ada\nsecond line")
    assert not message.is_multipart()
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert text_of(message) == "Hello Ada\nsecond line\n"
    assert message["MIME-Version"] == "1.0"


def test_text_and_html_are_alternatives() -> None:
    message = compose(text="Hello", html="<p>Hello</p>")
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert text_of(message.get_body(("html",))) == "<p>Hello</p>\n"  # type: ignore[arg-type]


def test_html_only_gets_a_derived_text_alternative_not_an_empty_one() -> None:
    html = ("<html><head><style>p {color: red}</style></head><body><h1>Welcome</h1>"
            "<p>Your code is <b>123456</b>.</p><ul><li>one</li><li>two</li></ul>"
            "<p><a href='https://postroom.test/x'>Open</a></p><script>alert(1)</script>")
    message = compose(html=html)
    assert message.get_content_type() == "multipart/alternative"
    text = text_of(message.get_body(("plain",)))  # type: ignore[arg-type]
    assert text == ("Welcome\n\nYour code is 123456.\n\n- one\n- two\n\n"
                    "Open (https://postroom.test/x)\n")


def test_attachments_wrap_the_body_in_mixed() -> None:
    message = compose(text="see attached", html="<p>see attached</p>",
                      attachments=[Attachment("report.csv", "text/csv", b"a,b\r\n1,2\r\n")])
    assert message.get_content_type() == "multipart/mixed"
    body, attachment = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content() in (b"a,b\r\n1,2\r\n", "a,b\r\n1,2\r\n")
    assert attachment.get_payload(decode=True) == b"a,b\r\n1,2\r\n"


@pytest.mark.parametrize("name", [
    "résumé 2024.pdf",
    "日本語のファイル名がとても長い場合のテスト用ドキュメント_最終稿.pdf",
    'quote "and" semicolon; name.txt'])
def test_non_ascii_file_names_read_back_exactly(name: str) -> None:
    message = compose(text="x", attachments=[Attachment(name, "application/pdf", b"%PDF-1.4")])
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == name


def test_ascii_attachments_folds_names_as_flask_mail_does() -> None:
    composer = Composer(ascii_attachments=True)
    data = composer.compose(Draft(sender=SENDER, to=["a@example.com"], subject="x", text="x",
                                  attachments=[Attachment("résumé.pdf", "application/pdf",
                                                          b"1")])).data
    [attachment] = parse(data).iter_attachments()
    assert attachment.get_filename() == "resume.pdf"
    assert b"filename=\"resume.pdf\"" in data or b"filename=resume.pdf" in data


def test_lines_over_998_characters_are_encoded() -> None:
    long_line = "word " * 400  # 2,000 characters
    data = Composer().compose(Draft(sender=SENDER, to=["a@example.com"], subject="long",
                                    text=long_line, html=f"<p>{long_line}</p>")).data
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    message = parse(data)
    assert text_of(message.get_body(("plain",))) == long_line + "\n"  # type: ignore[arg-type]


def test_output_is_seven_bit_with_crlf_line_ends() -> None:
    data = Composer().compose(Draft(sender="Zoë <zoe@example.com>", to=["Jürgen <j@example.com>"],
                                    subject="Grüße aus Köln", text="Größe: 10 €",
                                    html="<p>Größe</p>")).data
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    message = parse(data)
    assert message["Subject"] == "Grüße aus Köln"
    assert message["From"] == "Zoë <zoe@example.com>"
    assert message["To"].addresses[0].display_name == "Jürgen"
    assert text_of(message.get_body(("plain",))) == "Größe: 10 €\n"  # type: ignore[arg-type]


def test_message_id_uses_the_configured_domain_without_getfqdn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookup(name: str = "") -> str:
        raise AssertionError("getfqdn() called")

    monkeypatch.setattr(socket, "getfqdn", no_lookup)
    composer = Composer(message_id_domain="mail.postroom.test")
    ids = {composer.compose(Draft(sender=SENDER, to=["a@example.com"], subject="x",
                                  text="x")).message_id for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("<") and i.endswith("@mail.postroom.test>") for i in ids)
    without_domain = Composer().compose(Draft(sender=SENDER, to=["a@example.com"], subject="x",
                                              text="x"))
    assert without_domain.message_id.endswith("@postroom.test>")  # the sender's domain


def test_a_given_message_id_is_kept() -> None:
    composed = Composer().compose(Draft(sender=SENDER, to=["a@example.com"], subject="x",
                                        text="x", message_id="<abc.7@postroom.test>"))
    assert composed.message_id == "<abc.7@postroom.test>"
    assert parse(composed.data)["Message-ID"] == "<abc.7@postroom.test>"


def test_bcc_is_in_the_envelope_only() -> None:
    composed = Composer().compose(Draft(sender=SENDER, to=["a@example.com"], cc=["c@example.com"],
                                        bcc=["b@example.com"], subject="x", text="x"))
    assert composed.envelope_recipients == ["a@example.com", "c@example.com", "b@example.com"]
    assert b"b@example.com" not in composed.data
    assert parse(composed.data)["Cc"] == "c@example.com"


def test_each_attachment_is_encoded_once_per_batch() -> None:
    composer = Composer()
    big = Attachment("big.bin", "application/octet-stream", bytes(range(256)) * 4096)
    small = Attachment("small.txt", "text/plain", b"hello")
    messages = [composer.compose(Draft(sender=SENDER, to=[f"r{i}@example.com"], subject="x",
                                       text=f"Dear {i}", attachments=[big, small]))
                for i in range(100)]
    assert composer.encodings == 2
    last = parse(messages[-1].data)
    assert [a.get_payload(decode=True) for a in last.iter_attachments()] == [big.data, small.data]
    assert text_of(last.get_body(("plain",))) == "Dear 99\n"  # type: ignore[arg-type]


@pytest.mark.parametrize("fields", [
    {"subject": "x\r\nBcc: evil@example.com"},
    {"to": ["a@example.com\nBcc: evil@example.com"]},
    {"headers": {"X-Tag": "a\nb"}},
    {"headers": {"Bad Name": "x"}},
    {"to": []},
    {"sender": ""},
    {"to": ["not an address"]},
])
def test_broken_drafts_are_refused(fields: dict[str, Any]) -> None:
    draft = Draft(**{"sender": SENDER, "to": ["a@example.com"], "subject": "x", "text": "x",
                     **fields})
    with pytest.raises(InvalidMessageError):
        Composer().compose(draft)


def test_custom_headers_are_kept() -> None:
    message = compose(text="x", headers={"List-Unsubscribe": "<https://postroom.test/u/1>",
                                         "X-Note": "ünïcode"})
    assert message["List-Unsubscribe"] == "<https://postroom.test/u/1>"
    assert message["X-Note"] == "ünïcode"


def test_long_ascii_headers_are_folded_not_encoded() -> None:
    url = "<https://postroom.test/unsubscribe/" + "Wy" * 80 + ">"
    subject = "A long subject line " * 8
    draft = Draft(sender=SENDER, to=["ada@example.com"], subject=subject.strip(), text="x",
                  headers={"List-Unsubscribe": url})
    data = Composer().compose(draft).data
    assert b"=?" not in data.split(b"\r\n\r\n", 1)[0]  # no RFC 2047 encoded-words
    assert f"List-Unsubscribe: {url}\r\n".encode() in data  # clients read the URL as written
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert max(len(line) for line in head if not line.startswith(b"List-Unsubscribe")) <= 78
    assert parse(data)["Subject"] == subject.strip()


def test_a_header_word_longer_than_a_line_may_be_is_refused() -> None:
    with pytest.raises(InvalidMessageError, match="X-Token"):
        Composer().compose(Draft(sender=SENDER, to=["ada@example.com"], subject="Hi", text="x",
                                 headers={"X-Token": "t" * 1000}))
