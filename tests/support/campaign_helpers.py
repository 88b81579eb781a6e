"""Helpers shared by the campaign tests: CSV files, uploads, polling."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import AUTH


def csv_bytes(rows: list[dict[str, str]], *, bom: bool = False) -> bytes:
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(row[name] for name in header) for row in rows]
    text = "\r\n".join(lines) + "\r\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def people(n: int, *, domain: str = "example.com") -> list[dict[str, str]]:
    return [{"email": f"person{i:05d}@{domain}", "name": f"Person {i}", "code": f"C{i:05d}"}
            for i in range(n)]


def upload(client: FlaskClient, data: bytes, **fields: Any) -> Any:
    form: dict[str, Any] = {"subject": "Hello {{ name }}",
                            "body": "Dear {{ name }}, your code is {{ code }}."}
    form.update(fields)
    form["file"] = (io.BytesIO(data), "recipients.csv")
    return client.post("/api/campaigns", data=form, headers=AUTH,
                       content_type="multipart/form-data")


def create(client: FlaskClient, data: bytes, **fields: Any) -> dict[str, Any]:
    response = upload(client, data, **fields)
    assert response.status_code == 202, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def show(client: FlaskClient, campaign_id: str) -> dict[str, Any]:
    response = client.get(f"/api/campaigns/{campaign_id}", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def act(client: FlaskClient, campaign_id: str, action: str) -> Any:
    return client.post(f"/api/campaigns/{campaign_id}/{action}", headers=AUTH)


def recipients(client: FlaskClient, campaign_id: str, status: str | None = None
               ) -> list[dict[str, Any]]:
    """Every recipient (optionally of one status), following the cursor."""
    found: list[dict[str, Any]] = []
    cursor: int | None = 0
    while cursor is not None:
        query = f"?cursor={cursor}&limit=500" + (f"&status={status}" if status else "")
        page = client.get(f"/api/campaigns/{campaign_id}/recipients{query}",
                          headers=AUTH).get_json()
        found += page["recipients"]
        cursor = page.get("next_cursor")
    return found


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0,
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
