"""The WSGI entry point for production servers: `gunicorn web.wsgi:app`."""

from web import create_app, start_hearing

app = create_app()
start_hearing(app)
