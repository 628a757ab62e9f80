"""The API as an AWS Lambda function (a container image behind a function URL; ``infra/``).

The image's command is ``fruits.api.function.handler``. The app is made once per execution
environment, at cold start, and keeps its model and classifier between invocations.

Limitations: a function URL takes a request body of at most 6 MB (base64 counted, so about
4.5 MB of photo): larger photos get the function URL's own 413, not the API's.
"""

from __future__ import annotations

from mangum import Mangum

from ..config import Settings
from ..query.store import FeatureStore
from .app import create_app, readiness

_store = FeatureStore(Settings.from_env())
readiness(_store)  # the model and the classifier loaded at cold start, not in the first request
# Mangum would run the app's start-up at every invocation: it ran once, above.
handler = Mangum(create_app(_store.settings, _store), lifespan="off")
