"""The two forms of the verification flow (CSRF-protected by Flask-WTF)."""

from __future__ import annotations

from typing import Any

from email_validator import EmailNotValidError
from flask import current_app
from flask_wtf import FlaskForm
from wtforms import HiddenField, StringField
from wtforms.validators import DataRequired, Length, ValidationError

from tasks.codes.store import normalise_code
from tasks.shared.mailbox import checked_address
from web.addresses import special_use_allowed


class AddressForm(FlaskForm):  # type: ignore[misc]
    """``/verify``: the address to send a code to."""

    email = StringField("Email address", validators=[DataRequired(), Length(max=254)])

    def validate_email(self, field: Any) -> None:
        try:
            checked = checked_address(field.data, special_use=special_use_allowed())
        except EmailNotValidError as err:
            raise ValidationError(str(err)) from None
        field.data = checked.normalized


class CodeForm(FlaskForm):  # type: ignore[misc]
    """``/validate``: the request it answers and the code from the mail."""

    request_id = HiddenField(validators=[DataRequired(), Length(max=64)])
    code = StringField("Code", validators=[DataRequired(message="Enter the code from the email.")])

    def validate_code(self, field: Any) -> None:
        length = int(current_app.config["OTP_LENGTH"])
        try:
            field.data = normalise_code(field.data, length)
        except ValueError:
            raise ValidationError(f"Enter the {length}-digit code from the email.") from None
