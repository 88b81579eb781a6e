"""A form sent without a valid CSRF token: a page that says so, not a bare 400.

Flask-WTF refuses such a form before its view runs, so nothing was read or stored. That
happens to people, not only to attackers: a form left open until its token expired
(``WTF_CSRF_TIME_LIMIT``), or a session cookie cleared meanwhile. The page says what
happened and links to the form again (its own URL, query included, when that URL shows a
form on GET; otherwise the home page).
"""

from __future__ import annotations

from flask import Flask, current_app, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException


def _form_again() -> str:
    try:
        current_app.url_map.bind("").match(request.path, method="GET")
    except HTTPException:
        return "/"
    return request.full_path.rstrip("?")


def form_expired(err: CSRFError) -> tuple[str, int]:
    """Only pages see this: the API takes bearer tokens and is exempt from the check."""
    return render_template("form_expired.html", again=_form_again()), 400


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, form_expired)
