"""The API as an AWS Lambda function (a container image behind a function URL; ``infra/``).

The image's command is ``fruits.api.function.handler``. The app is made once per execution
environment, at cold start, with its model, classifier and similarity index loaded then, and
kept between invocations.

Limitations: a function URL takes a request body of at most 6 MB (base64 counted, so about
4.5 MB of photo): larger photos get the function URL's own 413, not the API's.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from mangum import Mangum

from ..config import Settings
from ..query.store import FeatureStore
from .app import create_app, readiness

log = logging.getLogger(__name__)

_store = FeatureStore(Settings.from_env())
# The cold start loads what answering needs, not the first request; what is missing is logged, and
# /readyz and the answers say it (a 503) until it is there.
_ready = readiness(_store)
if not _ready.ready:
    log.warning("fruits API not ready: %s", "; ".join(_ready.problems))
# Mangum would run the app's start-up at every invocation: it ran once, above.
_app = Mangum(create_app(_store), lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A function-URL event (payload 2.0) answered by the app."""
    # The path arrives as sent (percent-encoded, rawPath): decoded once, as uvicorn does, so that
    # a key's %2F and %20 mean the same behind the function URL as on `fruits serve`.
    if "rawPath" in event and "http" in event.get("requestContext", {}):
        event["requestContext"]["http"]["path"] = urllib.parse.unquote(event["rawPath"])
    return _app(event, context)
