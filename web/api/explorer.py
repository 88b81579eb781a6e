"""``GET /api/docs``: Swagger UI over ``/api/openapi.json``, every file served by the app.

The Swagger UI files come from the ``flask-swagger-ui`` package (only its assets,
not its blueprint, whose page runs an inline script). The page loads no script,
style or image from anywhere but this app, and its Content-Security-Policy says
so: the start-up code is ``static/api-docs.js``, not inline. "Try it out" sends
the token given under "Authorize" as ``Authorization: Bearer <token>`` (the
document's ``bearer`` security scheme). Viewing needs no token, as the document
itself needs none.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from flask import abort, make_response, render_template, send_from_directory
from flask.typing import ResponseReturnValue

from web.api.blueprint import bp

ASSETS = Path(str(files("flask_swagger_ui") / "dist"))
SERVED = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png",
                    "favicon-16x16.png"})
ASSET_MAX_AGE = 24 * 3600  # seconds; the files change only with the package
# 'self' only: no inline script or style, no eval, nothing from another origin
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'")


@bp.get("/docs")
def docs() -> ResponseReturnValue:
    response = make_response(render_template("api/docs.html"))
    response.headers["Content-Security-Policy"] = POLICY
    return response


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> ResponseReturnValue:
    if name not in SERVED:
        abort(404)
    return send_from_directory(ASSETS, name, max_age=ASSET_MAX_AGE)
