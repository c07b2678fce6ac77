"""The proxy's error tree, written down once.

    ProxyError (status, message, headers)
    ├── BadRequest            400  malformed JSON, missing or mistyped fields
    ├── Unauthorized          401  client key missing or wrong
    ├── ModelNotFound         404  no box advertises the model
    ├── RouteNotFound         404  / MethodNotAllowed 405
    ├── RouteNotImplemented   501  a route Ollama serves that ollamux does not
    ├── PayloadTooLarge       413
    ├── TooManyRequests       429  one user holds their whole share of the waiting room
    ├── HeadersTooLarge       431
    ├── NoCapacity            503  boxes have the model but none can take it now (Retry-After)
    └── UpstreamError         502  the box could not be reached or broke the connection
        ├── UpstreamTimeout   504  the box did not answer in time
        └── UpstreamBadAnswer 502  the box answered, but not as asked (probes)

Foreign errors (aiohttp's) are translated at one boundary, ``backends.upstream``. One
handler in ``app.py`` renders them in the API's own shape: ``{"error": "..."}`` on Ollama
routes, OpenAI's error object on ``/v1``.
"""

from __future__ import annotations


class ProxyError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.param = param  # the request field at fault (OpenAI's error ``param``)


class BadRequest(ProxyError):
    status = 400
    code = "invalid_request"


class Unauthorized(ProxyError):
    status = 401
    code = "invalid_api_key"


class ModelNotFound(ProxyError):
    status = 404
    code = "model_not_found"


class RouteNotFound(ProxyError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    code = "method_not_allowed"


class RouteNotImplemented(ProxyError):
    status = 501
    code = "not_implemented"


class PayloadTooLarge(ProxyError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(ProxyError):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class HeadersTooLarge(ProxyError):
    status = 431
    code = "request_headers_too_large"


class NoCapacity(ProxyError):
    status = 503
    code = "no_capacity"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamError(ProxyError):
    status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, box: str) -> None:
        super().__init__(message)
        self.box = box


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamBadAnswer(UpstreamError):
    """The box is reachable but answered a probe with an error status or bad JSON."""

    def __init__(self, message: str, *, box: str, status: int | None = None) -> None:
        super().__init__(message, box=box)
        # The HTTP status it answered (None: a 2xx with a body not of its kind). A 5xx
        # is a box of its kind that cannot serve now; a 4xx is no box of its kind here.
        self.answered = status
