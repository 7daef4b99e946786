"""The peergrid web app: dashboard, REST API for people, and the node API for worker agents."""

from __future__ import annotations

import logging

from flask import Flask, g, make_response, message_flashed
from werkzeug.routing import IntegerConverter, PathConverter

MAX_ID = 2**63 - 1


class StoreId(IntegerConverter):
    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


class OpId(PathConverter):
    """An op id in a URL's path: any text without whitespace, '/' included (Nosana's rule).

    A '.' or '..' segment has its dots encoded, so that no client folds it into the path around it,
    and an id may start with '/' (its routes keep their slashes: merge_slashes=False).
    """

    regex = ".+?"
    part_isolating = False  # it matches across '/'

    def to_url(self, value: str) -> str:
        return "/".join(
            "%2E" * len(segment) if segment and set(segment) <= {"."} else super(OpId, self).to_url(segment)
            for segment in str(value).split("/")
        )

from protocol.gpus import gb_text
from scheduler.artifacts import check_artifacts_writable
from scheduler.core import Core
from scheduler.settings import Settings
from web.bodies import BodyJSONProvider
from web.errors import STORE_UNREACHABLE, holds_nul, store_unreachable

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, core: Core | None = None) -> Flask:
    """Build the Flask app; settings are read from the environment when not given."""
    settings = settings or (core.settings if core else Settings.from_env())
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    app.json = BodyJSONProvider(app)
    # Refuse to start, rather than fail every upload of an op's output later.
    check_artifacts_writable(settings.data_dir)
    app.extensions["peergrid"] = core or Core.from_settings(settings)
    # Ids in URLs fit the store's 64-bit integers; a longer number is simply not found.
    app.url_map.converters["int"] = StoreId
    app.url_map.converters["op_id"] = OpId
    # GPU memory on pages, in the one unit it is counted in (protocol.gpus).
    app.add_template_filter(gb_text, "gb")

    from web import account_pages, admin_pages, api, array_pages, dashboard, errors, metrics, submit_pages  # noqa: F401

    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(admin_pages.bp)
    app.register_blueprint(account_pages.bp)
    app.register_blueprint(submit_pages.bp)
    app.register_blueprint(metrics.bp)

    @message_flashed.connect_via(app)
    def _refused(sender, message, category, **extra):
        # A page that shows a refusal and redirects answers 302; what it wrote before the refusal
        # must not be kept all the same.
        if category == "error":
            g.refused = True

    @app.after_request
    def _commit(response):
        # Commit here, while the answer can still become an error, then publish offers. An error
        # answer, or a refusal flashed on the way to another page, rolls back instead.
        refused = g.pop("refused", False)
        session = g.pop("db", None)
        if session is not None:
            core_ = app.extensions["peergrid"]
            try:
                if response.status_code < 400 and not refused:
                    core_.commit(session)
                else:
                    core_.rollback(session)
            except STORE_UNREACHABLE as e:
                log.warning("commit failed, the store is unreachable: %s", e)
                _discard(core_, session)
                return store_unreachable()
            except Exception as e:
                _discard(core_, session)
                nul = holds_nul(e)
                if nul is not None:
                    return make_response(nul)
                log.exception("commit failed")
                return errors.json_error(500, "The request could not be saved; try again.")
            session.close()
        return response

    @app.after_request
    def _security_headers(response):
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        if response.mimetype == "text/html":
            headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    def _release(exc):
        session = g.pop("db", None)
        if session is not None:
            _discard(app.extensions["peergrid"], session)

    return app


def start_hearing(app: Flask):
    """Mark this web process, in the store, as one that hears node heartbeats (scheduler.hearing),
    for as long as the process lives, beating loop `hearing` in its health file (PEERGRID_HEALTH_FILE).
    Serving processes call it; test apps need not."""
    from scheduler.hearing import Ears
    from scheduler.leadership import process_name

    ears = Ears(app.extensions["peergrid"], process_name())
    ears.start()
    app.extensions["peergrid.ears"] = ears
    return ears


def _discard(core: Core, session) -> None:
    """Roll back and close a request's session; a store that went away cannot make this fail."""
    try:
        core.rollback(session)
    except STORE_UNREACHABLE:
        log.warning("could not roll back: the store is unreachable")
    finally:
        session.close()
