"""The HTTP API (``fruits serve``): ``create_app`` makes it over the tables of a ``Settings``.

Example::

    from fruits.api import create_app
    app = create_app(Settings.from_env())      # an ASGI app: uvicorn.run(app, port=8080)
"""

from .app import create_app

__all__ = ["create_app"]
