"""Turning the core's errors into answers: JSON for the API, a page for the dashboard."""

from __future__ import annotations

from flask import Flask, g, jsonify, make_response, render_template, request
from sqlalchemy.exc import DataError, DisconnectionError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from protocol.wire import ProtocolError
from scheduler.artifacts import ArtifactTooLarge
from scheduler.ledger import InsufficientCredits
from scheduler.errors import (
    AuthenticationError,
    Banned,
    Conflict,
    InvalidDefinition,
    NoMarket,
    NotFound,
    PeergridError,
    QuotaExceeded,
)


# What an outage of the store raises: it cannot be reached, or the connection broke. It passes, so
# the caller is asked to come back rather than told the server is broken.
STORE_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError)
RETRY_AFTER_S = 5
UNREACHABLE = "The job store cannot be reached just now; try again in a few seconds."


def json_error(status: int, message: str, **extra):
    response = jsonify({"error": message, **extra})
    response.status_code = status
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def init_app(app: Flask) -> None:
    @app.errorhandler(InvalidDefinition)
    def _invalid(e: InvalidDefinition):
        return json_error(
            422, "The job definition has problems.", errors=[p.as_dict() for p in e.problems]
        )

    @app.errorhandler(NoMarket)
    def _no_market(e: NoMarket):
        return json_error(422, str(e), errors=[{"path": "$.ops", "message": str(e)}])

    @app.errorhandler(InsufficientCredits)
    def _payment_required(e: InsufficientCredits):
        return _page_or_json(402, str(e)) if not _wants_json() else json_error(
            402, str(e), needed=e.needed, available=e.available, shortfall=e.shortfall
        )

    @app.errorhandler(QuotaExceeded)
    def _over_quota(e: QuotaExceeded):
        if not _wants_json():
            return _page_or_json(429, str(e))
        return json_error(429, str(e), quota={"market": e.market, "max_waiting_jobs": e.max_waiting_jobs},
                          waiting=e.waiting)

    @app.errorhandler(ArtifactTooLarge)
    def _too_large(e: ArtifactTooLarge):
        return json_error(413, str(e))

    @app.errorhandler(Banned)
    def _banned(e: Banned):
        return json_error(403, str(e))

    @app.errorhandler(NotFound)
    def _not_found(e: NotFound):
        return _page_or_json(404, str(e))

    @app.errorhandler(Conflict)
    def _conflict(e: Conflict):
        return _page_or_json(409, str(e))

    @app.errorhandler(AuthenticationError)
    def _unauthenticated(e: AuthenticationError):
        response = _page_or_json(401, str(e))
        if _wants_json():
            response.headers["WWW-Authenticate"] = 'Bearer realm="peergrid"'
        return response

    @app.errorhandler(PeergridError)
    @app.errorhandler(ProtocolError)
    def _bad_request(e: PeergridError | ProtocolError):
        return _page_or_json(400, str(e))

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        if e.code == 413:
            return _page_or_json(413, "The request body is larger than this server accepts.")
        return _page_or_json(e.code or 500, e.description or e.name)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(DisconnectionError)
    def _store_unreachable(e: Exception):
        app.logger.warning("the store is unreachable on %s %s: %s", request.method, request.path, e)
        return store_unreachable()

    @app.errorhandler(DataError)
    def _data(e: DataError):
        return holds_nul(e) or _crash(e)

    @app.errorhandler(Exception)
    def _crash(e: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return _page_or_json(500, "Something went wrong on the server; the error was logged.")


def _page_or_json(status: int, message: str):
    if _wants_json():
        return json_error(status, message)
    return render_template("error.html", status=status, message=message), status


def store_unreachable():
    """503 with Retry-After, as JSON or a page that needs nothing from the store."""
    g.user = None  # the page is drawn signed out: who is signed in is in the store
    response = make_response(_page_or_json(503, UNREACHABLE))
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def holds_nul(e: Exception):
    """400 when the store refused text for holding a NUL (PostgreSQL cannot keep one, not even to
    compare with), else None: any input that reaches a query, a sign-in form's included."""
    if isinstance(e, DataError) and "NUL" in str(e.orig):
        return _page_or_json(400, "The request holds a NUL character (\\u0000), which cannot be stored: remove it.")
    return None
