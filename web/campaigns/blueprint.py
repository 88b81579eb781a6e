"""The operator pages' blueprint (``/campaigns``), shared by every module of routes on it.

It holds what those routes have in common: the operator's session check
(:func:`admin_required`), the campaign store, and how a refused request is shown:
a campaign not found is the 404 page; anything else a service refuses
(:data:`REFUSED`) is flashed or shown beside the form by the page.
"""

from __future__ import annotations

from functools import wraps
from typing import Any

from flask import Blueprint, current_app, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import NotFound as PageNotFound

from tasks.campaigns.store import CampaignStore
from tasks.shared.errors import Conflict, DomainError, Invalid, NotFound, TooLarge
from web.campaigns.signin import sessions
from web.campaigns.timing import register_filters

bp = Blueprint("campaigns", __name__, url_prefix="/campaigns")
SESSION_KEY = "postroom_admin"
# what a page tells the operator in a flash or beside the form (a campaign not found is
# the 404 page instead: see not_found)
REFUSED: tuple[type[DomainError], ...] = (Conflict, Invalid, TooLarge)
register_filters(bp)


@bp.errorhandler(NotFound)
def not_found(err: NotFound) -> ResponseReturnValue:
    """A campaign a service did not find is the 404 page, as an unknown id is."""
    return PageNotFound()


def _store() -> CampaignStore:
    return CampaignStore(current_app.extensions["redis"])


def admin_required(view: Any) -> Any:
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not sessions().is_open(session.get(SESSION_KEY)):
            return redirect(url_for("campaigns.login", next=request.path))
        return view(*args, **kwargs)

    return wrapped
