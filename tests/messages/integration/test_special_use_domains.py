"""ALLOW_SPECIAL_USE_DOMAINS: recipients under .local, .internal, .home.arpa, ... only where a
deployment allows them; refused (422) by default at the public API."""

from __future__ import annotations

from typing import Any

import pytest
from email_validator import EmailNotValidError

from tasks.shared.mailbox import checked_address
from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer
from web.config import ConfigError, from_environ


@pytest.mark.parametrize("address", ["ada@corp.local", "ada@srv.internal", "ada@pc.lan",
                                     "ada@nas.home.arpa"])
def test_special_use_names_are_refused_unless_allowed(address: str) -> None:
    with pytest.raises(EmailNotValidError):
        checked_address(address)
    suffix = address.split("@")[1].split(".", 1)[1]
    assert checked_address(address, special_use=(suffix,)).normalized == address
    with pytest.raises(EmailNotValidError):  # allowing one name allows no other
        checked_address(address, special_use=("onion",))


def test_allowed_names_keep_every_other_check() -> None:
    with pytest.raises(EmailNotValidError):
        checked_address("ada..lovelace@corp.local", special_use=("local",))
    assert checked_address("Ada@Corp.LOCAL", special_use=("local",)).ascii_domain == \
        "corp.local"


def test_the_setting_accepts_special_use_names_only() -> None:
    assert from_environ({"ALLOW_SPECIAL_USE_DOMAINS": "local, Internal,"})[
        "ALLOW_SPECIAL_USE_DOMAINS"] == ("local", "internal")
    assert from_environ({})["ALLOW_SPECIAL_USE_DOMAINS"] == ()
    with pytest.raises(ConfigError, match="ALLOW_SPECIAL_USE_DOMAINS: example.com"):
        from_environ({"ALLOW_SPECIAL_USE_DOMAINS": "example.com"})


def _post(client: Any, to: str) -> Any:
    return client.post("/api/messages", headers=AUTH,
                       json={"to": [to], "subject": "Hi", "body": "Hello"})


def test_the_api_refuses_local_addresses_by_default(client: Any) -> None:
    response = _post(client, "ada@corp.local")
    assert response.status_code == 422
    assert "special-use" in str(response.get_json()["error"])


@pytest.mark.parametrize("config_overrides", [{"ALLOW_SPECIAL_USE_DOMAINS": "local,internal"}])
def test_a_deployment_that_allows_them_sends_to_them(client: Any,
                                                     smtp_server: SMTPTestServer) -> None:
    for to in ("ada@corp.local", "bob@srv.internal"):
        assert _post(client, to).status_code == 202
    assert sorted(r for m in smtp_server.received for r in m.recipients) == [
        "ada@corp.local", "bob@srv.internal"]
    assert _post(client, "eve@x.onion").status_code == 422
