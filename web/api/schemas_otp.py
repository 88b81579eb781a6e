"""Schemas of the OTP API (``/api/otp``); they validate requests and describe the API."""

from __future__ import annotations

from typing import Any

from email_validator import EmailNotValidError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tasks.codes.store import normalise_code
from tasks.shared.mailbox import checked_address
from web.addresses import special_use_allowed


class OTPRequestIn(BaseModel):
    """``POST /api/otp``: the address to verify."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=254, description="a bare address: user@example.com",
                       json_schema_extra={"format": "email"})

    @field_validator("email", mode="before")
    @classmethod
    def _address(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be an email address as a string")
        try:
            return checked_address(value, special_use=special_use_allowed()).normalized
        except EmailNotValidError as err:
            raise ValueError(str(err)) from None


class OTPCodeIn(BaseModel):
    """``POST /api/otp/<id>/verify``: the code from the mail (spaces are ignored)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="OTP_LENGTH digits, e.g. \"042917\"")

    @field_validator("code", mode="before")
    @classmethod
    def _digits(cls, value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string of digits (leading zeros matter)")
        length = int((info.context or {}).get("length", 6))
        return normalise_code(value, length)


class OTPStatusOut(BaseModel):
    """``GET /api/otp/<id>``."""

    id: str
    status: str
    attempts_left: int
    expires_at: float
    updated_at: float
    error: str | None = None


class OTPVerifiedOut(BaseModel):
    """``POST /api/otp/<id>/verify`` succeeded."""

    verified: bool
