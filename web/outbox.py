"""The dev-only Outbox page: messages the embedded SMTP server captured.

Registered only when ``OUTBOX_DIR`` is set, which ``postroom dev`` does when it
runs its own capture server.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from flask import Blueprint, abort, current_app, render_template
from flask.typing import ResponseReturnValue

bp = Blueprint("outbox", __name__, url_prefix="/outbox")

PAGE_SIZE = 100


def _outbox() -> Path:
    return Path(current_app.config["OUTBOX_DIR"])


@bp.get("/")
def index() -> ResponseReturnValue:
    files = sorted(_outbox().glob("*.eml"), reverse=True)[:PAGE_SIZE]
    messages = []
    for path in files:
        with path.open("rb") as handle:
            parsed = email.message_from_binary_file(handle, policy=email.policy.default)
        messages.append({"name": path.stem, "subject": parsed["Subject"], "to": parsed["To"],
                         "from": parsed["From"], "date": parsed["Date"]})
    return render_template("outbox/index.html", messages=messages)


@bp.get("/<name>")
def show(name: str) -> ResponseReturnValue:
    path = _outbox() / f"{name}.eml"
    if "/" in name or not path.is_file():
        abort(404)
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    body = parsed.get_body(preferencelist=("plain", "html"))
    text = body.get_content() if body is not None else ""
    return render_template("outbox/show.html", message=parsed, text=text, name=name)
