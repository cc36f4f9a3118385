"""The gunicorn side: a WSGI app doing the same work as serve.py's HTTP handler."""

import os

from work import burn

BURN_N = int(os.environ.get("BURN_N", "0"))
BODY = b"x" * 64


def app(environ, start_response):
    if BURN_N:
        burn(BURN_N)
    start_response("200 OK", [("Content-Length", str(len(BODY)))])
    return [BODY]
