"""The HTTP API: an ASGI app (Starlette) of a runtime, served by hypercorn's trio worker in
the runtime's own process (``corra serve``).

Re-exports only, looked up when first used: the command line imports the light modules of
this package (`corra.api._wire`, `corra.api._client`) on every call, and should not pay for
the server's imports (hypercorn, starlette, prometheus_client) when it does not serve.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corra.api._app import MAX_BODY as MAX_BODY
    from corra.api._app import Api as Api
    from corra.api._app import open_api as open_api
    from corra.api._files import DEFAULT_PORT as DEFAULT_PORT
    from corra.api._files import load_token as load_token
    from corra.api._openapi import OPENAPI as OPENAPI
    from corra.api._server import Listen as Listen
    from corra.api._server import serve_api as serve_api

_EXPORTS = {
    "MAX_BODY": "corra.api._app",
    "Api": "corra.api._app",
    "open_api": "corra.api._app",
    "OPENAPI": "corra.api._openapi",
    "DEFAULT_PORT": "corra.api._files",
    "Listen": "corra.api._server",
    "load_token": "corra.api._files",
    "serve_api": "corra.api._server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corra.api' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
