"""``/``: what this deployment offers, as links."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, url_for
from flask.typing import ResponseReturnValue

bp = Blueprint("home", __name__)


def offers() -> list[dict[str, str]]:
    """The pages and endpoints this deployment serves, in the order a newcomer wants them."""
    config = current_app.config
    found = [
        {"title": "Verify an email address", "href": url_for("otp.verify"),
         "about": "Mail a one-time code to an address, then enter it."},
        {"title": "Campaigns", "href": url_for("campaigns.index"),
         "about": "Upload a CSV, schedule, follow and control bulk mail (operator sign-in)."},
    ]
    if "outbox" in current_app.blueprints:
        found.append({"title": "Outbox", "href": url_for("outbox.index"),
                      "about": "Every message the development SMTP server captured."})
    if config.get("FLOWER_URL"):
        found.append({"title": "Flower", "href": str(config["FLOWER_URL"]),
                      "about": "Workers, queues and tasks, live (basic auth)."})
    found += [
        {"title": "API", "href": url_for("api.openapi"),
         "about": "The OpenAPI 3 document of the JSON API (bearer token)."},
        {"title": "API explorer", "href": url_for("api.docs"),
         "about": "Every operation of the API, to read and try with a token."},
        {"title": "Health", "href": url_for("health.healthz"),
         "about": "Redis, the broker, workers, beat and the relays."},
        {"title": "Metrics", "href": url_for("metrics.metrics"),
         "about": "Prometheus text for the whole deployment."},
    ]
    return found


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_template("home.html", offers=offers())
