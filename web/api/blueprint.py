"""The API blueprint: bearer-token auth and scopes, and which error becomes which JSON answer."""

from __future__ import annotations

from flask import Blueprint, current_app, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from tasks.shared.errors import DomainError
from web.api.errors import (
    APIError,
    handle_api_error,
    handle_domain_error,
    handle_http_error,
    handle_routing_error,
    handle_validation_error,
)
from web.extensions import csrf
from web.token_scopes import granted, grants, needed_scope, path_template

bp = Blueprint("api", __name__, url_prefix="/api")
csrf.exempt(bp)  # bearer tokens, not cookies: CSRF cannot ride on them

PUBLIC_ENDPOINTS = frozenset({"api.openapi", "api.docs", "api.docs_asset"})


@bp.before_request
def require_token() -> None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    scopes = granted(token.strip(), grants(current_app.config["API_TOKENS"]))
    if scheme.lower() != "bearer" or scopes is None:
        raise APIError(401, "unauthorized", "send a valid token as 'Authorization: Bearer <token>'")
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    needed = needed_scope(request.method, path_template(rule))
    if needed not in scopes:
        raise APIError(403, "forbidden", f"this token lacks the '{needed}' scope this "
                       "operation needs")


bp.register_error_handler(APIError, handle_api_error)
bp.register_error_handler(DomainError, handle_domain_error)  # what a service refused
bp.register_error_handler(ValidationError, handle_validation_error)
bp.register_error_handler(HTTPException, handle_http_error)
# an unknown /api path or a wrong method matches no route, so no blueprint handler sees it
bp.app_errorhandler(404)(handle_routing_error)
bp.app_errorhandler(405)(handle_routing_error)
