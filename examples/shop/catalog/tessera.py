"""Tessera for Python: a small, synchronous API over the service's WIT imports.

    import tessera
    from tessera import Request, Response, kv, sql, config

    def handle(req: Request) -> Response:
        visits = kv.open("default").increment("visits")
        return Response.text(f"visit {visits}")

    IncomingHandler = tessera.handler(handle)   # exported as wasi:http/incoming-handler

What is here:

- `Request`, `Response`, `HTTPError`, `Router` and `handler`: answering HTTP requests.
- `fetch`: outgoing HTTP requests, including `http://<service>.internal/...`.
- `kv`: the service's key-value store (`kv.open("default")` gives a `Bucket`).
- `sql`: the service's SQL database (SQLite dialect; rows come back as dicts).
- `config`: the service's configuration and secrets.
- `publish`: events to a topic of the app.

Failures raise exceptions, all subclasses of `TesseraError`: `KVError`, `SQLError`,
`ConfigError`, `PublishError`, `FetchError`. `HTTPError` is raised by handlers to answer
with an error status.

componentize-py runs this module (and the app) once at build time and snapshots the
result, so every module used at run time must be imported at the top of a file.
"""

from __future__ import annotations

import json as _json
import re as _re
import sys as _sys
import traceback as _traceback
from dataclasses import dataclass as _dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union
from urllib.parse import parse_qsl as _parse_qsl, unquote as _unquote, urlsplit as _urlsplit

from componentize_py_types import Err as _Err, Ok as _Ok
from wit_world import exports as _exports
from wit_world.imports import outgoing_handler as _outgoing
from wit_world.imports import streams as _streams
from wit_world.imports import types as _http

# The data interfaces are optional: a service whose world leaves one out still builds,
# and only calling that part of the API fails.
try:
    from wit_world.imports import wasi_keyvalue_store as _kv_store
    from wit_world.imports import atomics as _kv_atomics
    from wit_world.imports import batch as _kv_batch
except ImportError:  # pragma: no cover
    _kv_store = _kv_atomics = _kv_batch = None
try:
    from wit_world.imports import sql as _sql
except ImportError:  # pragma: no cover
    _sql = None
try:
    from wit_world.imports import wasi_config_store as _config
except ImportError:  # pragma: no cover
    _config = None
try:
    from wit_world.imports import producer as _producer
except ImportError:  # pragma: no cover
    _producer = None

__all__ = [
    "Request", "Response", "HTTPError", "Router", "handler",
    "fetch", "FetchResponse", "kv", "Bucket", "sql", "Changes", "config", "publish",
    "TesseraError", "KVError", "SQLError", "ConfigError", "PublishError", "FetchError",
]

_CHUNK = 4096  # the most a blocking write may take at once
_READ = 64 * 1024


# --------------------------------------------------------------------------- errors

class TesseraError(Exception):
    """Base class of every error raised by this module's platform calls."""


class KVError(TesseraError):
    """A key-value operation failed. `kind`: no-such-store, access-denied or other."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.message = message


class SQLError(TesseraError):
    """A SQL call failed. `kind`: invalid-statement, constraint-violation, not-permitted,
    too-large, timeout or io; `message` is the database's explanation."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class ConfigError(TesseraError):
    """Configuration could not be read."""


class PublishError(TesseraError):
    """A message was refused. `kind`: invalid-topic, too-large or unavailable."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class FetchError(TesseraError):
    """An outgoing request failed before a response arrived. `code` is the wasi:http
    error code in WIT spelling, e.g. `http-request-denied` (the origin is not in the
    manifest's `outbound`), `connection-refused`, `dns-error`."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class HTTPError(Exception):
    """Raise in a handler to answer `status` with the JSON body `{"error": message}`."""

    def __init__(self, status: int, message: str, headers: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _variant(error: Any) -> tuple[str, str]:
    """A generated WIT variant case (e.g. `Error_ConstraintViolation("...")`) as
    (`constraint-violation`, "...")."""
    name = type(error).__name__.split("_", 1)[-1]
    kind = _re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
    value = getattr(error, "value", None)
    return kind, "" if value is None else str(value)


def _missing(what: str) -> TesseraError:
    return TesseraError(f"this service's world does not import {what} (see wit/world.wit)")


# --------------------------------------------------------------------------- bodies

def _read_all(body: Any) -> bytes:
    """Reads an incoming-body to its end and releases it."""
    chunks = []
    with body:
        with body.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(_READ))
                except _Err as e:
                    if isinstance(e.value, _streams.StreamError_Closed):
                        break
                    raise
    return b"".join(chunks)


def _write_all(body: Any, data: bytes) -> None:
    """Writes `data` to an outgoing-body and finishes it."""
    with body.write() as stream:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            stream.blocking_write_and_flush(bytes(view[start:start + _CHUNK]))
    _http.OutgoingBody.finish(body, None)


def _fields(headers: Optional[Mapping[str, str]]) -> Any:
    entries = []
    for name, value in (headers or {}).items():
        if isinstance(value, (list, tuple)):
            entries.extend((name.lower(), _encode_header(v)) for v in value)
        else:
            entries.append((name.lower(), _encode_header(value)))
    try:
        return _http.Fields.from_list(entries)
    except _Err as e:
        raise ValueError(f"invalid headers {sorted(dict(entries))}: {_variant(e.value)[0]}") from None


def _encode_header(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _header_dict(fields: Any) -> dict[str, str]:
    """Fields as {lowercase name: value}; repeated names are joined with ", "."""
    out: dict[str, str] = {}
    with fields:
        for name, value in fields.entries():
            text = value.decode("utf-8", "replace")
            name = name.lower()
            out[name] = f"{out[name]}, {text}" if name in out else text
    return out


_METHODS = {
    "GET": _http.Method_Get, "HEAD": _http.Method_Head, "POST": _http.Method_Post,
    "PUT": _http.Method_Put, "DELETE": _http.Method_Delete, "CONNECT": _http.Method_Connect,
    "OPTIONS": _http.Method_Options, "TRACE": _http.Method_Trace, "PATCH": _http.Method_Patch,
}
_METHOD_NAMES = {cls: name for name, cls in _METHODS.items()}


def _method_name(method: Any) -> str:
    if isinstance(method, _http.Method_Other):
        return method.value.upper()
    return _METHOD_NAMES[type(method)]


def _method_value(name: str) -> Any:
    name = name.upper()
    cls = _METHODS.get(name)
    return cls() if cls else _http.Method_Other(name)


# --------------------------------------------------------------------------- incoming

class Request:
    """An incoming HTTP request, body already read.

    `method` ("GET"...), `path` (the full path, without the query), `query` ({name:
    first value}), `query_string`, `headers` ({lowercase name: value}), `body` (bytes),
    `params` (what a `Router` pattern captured)."""

    def __init__(self, method: str, path: str, query_string: str = "",
                 headers: Optional[Mapping[str, str]] = None, body: bytes = b""):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.query: dict[str, str] = {}
        for name, value in _parse_qsl(query_string, keep_blank_values=True):
            self.query.setdefault(name, value)
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body
        self.params: dict[str, str] = {}

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """A header's value (case-insensitive name), or `default`."""
        return self.headers.get(name.lower(), default)

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def json(self) -> Any:
        """The body parsed as JSON; a malformed body raises `HTTPError(400)`."""
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise HTTPError(400, f"invalid JSON body: {e}") from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """An HTTP response: `Response(body, status=200, headers=None)`; or build one with
    `Response.text(...)`, `Response.json(...)`, `Response.error(status, message)`."""

    def __init__(self, body: Union[bytes, str] = b"", status: int = 200,
                 headers: Optional[Mapping[str, str]] = None):
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        self.status = status
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}

    @classmethod
    def text(cls, text: str, status: int = 200, headers: Optional[Mapping[str, str]] = None) -> "Response":
        """A text/plain response."""
        return cls(text, status, {"content-type": "text/plain; charset=utf-8", **(headers or {})})

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Optional[Mapping[str, str]] = None) -> "Response":
        """An application/json response of `data` (anything `json.dumps` takes)."""
        body = _json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return cls(body, status, {"content-type": "application/json", **(headers or {})})

    @classmethod
    def error(cls, status: int, message: str, headers: Optional[Mapping[str, str]] = None) -> "Response":
        """A JSON error: `{"error": message}`."""
        return cls.json({"error": message}, status, headers)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status=204)
    if isinstance(result, str):
        return Response.text(result)
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), headers={"content-type": "application/octet-stream"})
    if isinstance(result, (dict, list)):
        return Response.json(result)
    raise TypeError(f"a handler must return a Response, str, bytes, dict, list or None, not {type(result).__name__}")


def _read_request(request: Any) -> Request:
    method = _method_name(request.method())
    target = request.path_with_query() or "/"
    path, _, query = target.partition("?")
    headers = _header_dict(request.headers())
    body = _read_all(request.consume())
    return Request(method, path or "/", query, headers, body)


def _send_response(response: Response, response_out: Any) -> None:
    headers = dict(response.headers)
    headers.setdefault("content-length", str(len(response.body)))
    outgoing = _http.OutgoingResponse(_fields(headers))
    outgoing.set_status_code(response.status)
    body = outgoing.body()
    _http.ResponseOutparam.set(response_out, _Ok(outgoing))
    _write_all(body, response.body)


def _serve(app: Callable[[Request], Any], request: Any, response_out: Any) -> None:
    try:
        req = _read_request(request)
    except Exception as e:  # a client that sent a broken body
        _send_response(Response.error(400, f"could not read the request: {e}"), response_out)
        return
    try:
        response = _to_response(app(req))
    except HTTPError as e:
        response = Response.error(e.status, e.message, e.headers)
    except Exception:
        print(f"error: {req.method} {req.path}:", file=_sys.stderr)
        _traceback.print_exc()
        response = Response.error(500, "internal error")
    try:
        _send_response(response, response_out)
    except ValueError as e:  # e.g. a forbidden header
        print(f"error: {req.method} {req.path}: bad response: {e}", file=_sys.stderr)
        _send_response(Response.error(500, "internal error"), response_out)


def handler(app: Callable[[Request], Any]) -> type:
    """Turns `app(request) -> response` into the class componentize-py exports as
    `wasi:http/incoming-handler`. Bind it in the app module:

        IncomingHandler = tessera.handler(handle)

    `app` may return a `Response`, a str (text/plain), a dict or list (JSON), bytes or
    None (204). `HTTPError` becomes its JSON error; any other exception is printed to
    stderr (see `tessera logs SERVICE`) and answered 500 `{"error": "internal error"}`.
    """

    class IncomingHandler(_exports.IncomingHandler):
        def handle(self, request: Any, response_out: Any) -> None:
            _serve(app, request, response_out)

    return IncomingHandler


class Router:
    """Dispatches requests by method and path pattern:

        router = Router()

        @router.get("/items/{id}")
        def get_item(req, id): ...

        IncomingHandler = tessera.handler(router)

    `{name}` matches one path segment (URL-decoded) and is passed as a keyword argument
    (also in `req.params`). A trailing slash is ignored. A path no pattern matches is
    answered 404, a known path with another method 405, both as JSON errors."""

    def __init__(self) -> None:
        self._routes: list[tuple[frozenset[str], Any, Callable[..., Any]]] = []

    def route(self, pattern: str, methods: Iterable[str] = ("GET",)) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        parts = []
        for piece in _re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", pattern.rstrip("/") or "/"):
            if piece.startswith("{"):
                parts.append(f"(?P<{piece[1:-1]}>[^/]+)")
            else:
                parts.append(_re.escape(piece))
        regex = _re.compile("".join(parts) + r"\Z")
        allowed = frozenset(m.upper() for m in methods)

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._routes.append((allowed, regex, fn))
            return fn
        return register

    def get(self, pattern: str): return self.route(pattern, ("GET", "HEAD"))
    def post(self, pattern: str): return self.route(pattern, ("POST",))
    def put(self, pattern: str): return self.route(pattern, ("PUT",))
    def patch(self, pattern: str): return self.route(pattern, ("PATCH",))
    def delete(self, pattern: str): return self.route(pattern, ("DELETE",))

    def __call__(self, req: Request) -> Any:
        path = req.path.rstrip("/") or "/"
        allowed: set[str] = set()
        for methods, regex, fn in self._routes:
            match = regex.match(path)
            if match is None:
                continue
            if req.method not in methods:
                allowed |= methods
                continue
            req.params = {k: _unquote(v) for k, v in match.groupdict().items()}
            return fn(req, **req.params)
        if allowed:
            raise HTTPError(405, f"method {req.method} not allowed on {req.path}",
                            {"allow": ", ".join(sorted(allowed))})
        raise HTTPError(404, f"not found: {req.path}")


# --------------------------------------------------------------------------- outgoing

class FetchResponse:
    """The answer to `fetch`: `status`, `headers` ({lowercase name: value}), `body`."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"<FetchResponse {self.status} {len(self.body)} bytes>"


def fetch(url: str, method: str = "GET", headers: Optional[Mapping[str, str]] = None,
          body: Union[bytes, str, None] = None, json: Any = None,
          timeout: Optional[float] = None) -> FetchResponse:
    """Sends an HTTP request and waits for the whole response.

    `url` may name another service of the app, `http://<service>.internal/path`, once the
    manifest grants that origin (`outbound = ["http://<service>.internal"]`). `json`
    sends `json.dumps(json)` as application/json. `timeout` (seconds) bounds connecting
    and each wait for data. Any status is returned; a request that got no response
    raises `FetchError`."""
    parts = _urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    headers = dict(headers or {})
    if json is not None:
        body = _json.dumps(json, separators=(",", ":"))
        if not any(k.lower() == "content-type" for k in headers):
            headers["content-type"] = "application/json"
    data = body.encode("utf-8") if isinstance(body, str) else (body or b"")

    request = _http.OutgoingRequest(_fields(headers))
    request.set_method(_method_value(method))
    request.set_scheme(_http.Scheme_Https() if parts.scheme == "https" else _http.Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    options = None
    if timeout is not None:
        options = _http.RequestOptions()
        nanos = int(timeout * 1e9)
        options.set_connect_timeout(nanos)
        options.set_first_byte_timeout(nanos)
        options.set_between_bytes_timeout(nanos)
    outgoing_body = request.body()
    try:
        future = _outgoing.handle(request, options)
    except _Err as e:
        raise FetchError(*_variant(e.value)) from None
    _write_all(outgoing_body, data)

    with future:
        result = future.get()
        while result is None:
            with future.subscribe() as pollable:
                pollable.block()
            result = future.get()
    if isinstance(result, _Err) or isinstance(result.value, _Err):
        code = result.value if isinstance(result, _Err) else result.value.value
        raise FetchError(*_variant(code)) if code is not None else FetchError("internal-error")
    with result.value.value as response:
        status = response.status()
        response_headers = _header_dict(response.headers())
        try:
            response_body = _read_all(response.consume())
        except _Err as e:
            raise FetchError("http-response-incomplete", str(e.value)) from None
    return FetchResponse(status, response_headers, response_body)


# --------------------------------------------------------------------------- key-value

class Bucket:
    """One bucket of the service's key-value store. Values are bytes (str is stored as
    UTF-8); keys are non-empty strings of at most 1024 bytes; values at most 1 MiB."""

    def __init__(self, name: str, handle: Any):
        self.name = name
        self._handle = handle

    def get(self, key: str) -> Optional[bytes]:
        """The value, or None if the key is absent."""
        return _kv_call(self._handle.get, key)

    def get_text(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value decoded as UTF-8, or `default`."""
        value = self.get(key)
        return default if value is None else value.decode("utf-8")

    def get_json(self, key: str, default: Any = None) -> Any:
        """The value parsed as JSON, or `default`."""
        value = self.get(key)
        return default if value is None else _json.loads(value)

    def set(self, key: str, value: Union[bytes, str]) -> None:
        _kv_call(self._handle.set, key, _to_bytes(value))

    def set_json(self, key: str, value: Any) -> None:
        self.set(key, _json.dumps(value, separators=(",", ":")))

    def delete(self, key: str) -> None:
        """Removes the key (absent keys are fine)."""
        _kv_call(self._handle.delete, key)

    def exists(self, key: str) -> bool:
        return _kv_call(self._handle.exists, key)

    __contains__ = exists

    def keys(self, prefix: str = "") -> list[str]:
        """Every key (starting with `prefix`), in ascending byte order."""
        keys: list[str] = []
        cursor = None
        while True:
            page = _kv_call(self._handle.list_keys, cursor)
            keys.extend(k for k in page.keys if k.startswith(prefix))
            if page.cursor is None:
                return keys
            cursor = page.cursor

    def increment(self, key: str, delta: int = 1) -> int:
        """Atomically adds `delta` to the integer at `key` (absent = 0); returns the new
        value. Counters are stored as decimal text."""
        return _kv_call(_kv_atomics.increment, self._handle, key, delta)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The present keys among `keys` with their values, in one call."""
        found = _kv_call(_kv_batch.get_many, self._handle, list(keys))
        return {k: v for k, v in (pair for pair in found if pair is not None)}

    def set_many(self, items: Mapping[str, Union[bytes, str]]) -> None:
        _kv_call(_kv_batch.set_many, self._handle, [(k, _to_bytes(v)) for k, v in items.items()])

    def delete_many(self, keys: Sequence[str]) -> None:
        _kv_call(_kv_batch.delete_many, self._handle, list(keys))

    def __repr__(self) -> str:
        return f"<Bucket {self.name}>"


def _to_bytes(value: Union[bytes, str]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"key-value values are bytes or str, not {type(value).__name__}")


def _kv_call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except _Err as e:
        raise KVError(*_variant(e.value)) from None


class _KV:
    """The service's key-value store: `kv.open(name)` gives a `Bucket`."""

    def open(self, name: str = "default") -> Bucket:
        """Opens a bucket: `default`, or one listed in the manifest's `buckets`."""
        if _kv_store is None:
            raise _missing("wasi:keyvalue")
        return Bucket(name, _kv_call(_kv_store.open, name))


kv = _KV()


# --------------------------------------------------------------------------- SQL

@_dataclass(frozen=True)
class Changes:
    """What a statement changed."""
    rows_affected: int
    last_insert_id: Optional[int]


Param = Union[None, bool, int, float, str, bytes]


def _sql_value(value: Any) -> Any:
    if value is None:
        return _sql.Value_Null()
    if isinstance(value, (bool, int)):
        return _sql.Value_Integer(int(value))
    if isinstance(value, float):
        return _sql.Value_Real(value)
    if isinstance(value, str):
        return _sql.Value_Text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _sql.Value_Blob(bytes(value))
    raise TypeError(f"SQL parameters are None, int, float, str or bytes, not {type(value).__name__}")


def _sql_params(params: Sequence[Param]) -> list[Any]:
    if isinstance(params, (str, bytes)):
        raise TypeError("SQL parameters must be a sequence, e.g. (value,)")
    return [_sql_value(v) for v in params]


def _py_value(value: Any) -> Any:
    return None if isinstance(value, _sql.Value_Null) else value.value


def _sql_call(fn: Callable[..., Any], *args: Any) -> Any:
    if _sql is None:
        raise _missing("tessera:sql")
    try:
        return fn(*args)
    except _Err as e:
        raise SQLError(*_variant(e.value)) from None


class _SQL:
    """The service's own SQL database (SQLite dialect, `?` parameters). Each call is its
    own transaction; `batch` runs several statements in one."""

    def query(self, statement: str, params: Sequence[Param] = ()) -> list[dict[str, Any]]:
        """Runs one statement; its rows as dicts {column: value}."""
        if _sql is None:
            raise _missing("tessera:sql")
        result = _sql_call(_sql.query, statement, _sql_params(params))
        columns = result.columns
        return [dict(zip(columns, map(_py_value, row))) for row in result.rows]

    def query_one(self, statement: str, params: Sequence[Param] = ()) -> Optional[dict[str, Any]]:
        """The first row, or None."""
        rows = self.query(statement, params)
        return rows[0] if rows else None

    def execute(self, statement: str, params: Sequence[Param] = ()) -> Changes:
        """Runs one statement that returns no rows."""
        if _sql is None:
            raise _missing("tessera:sql")
        c = _sql_call(_sql.execute, statement, _sql_params(params))
        return Changes(c.rows_affected, c.last_insert_id)

    def batch(self, statements: Iterable[Union[str, tuple[str, Sequence[Param]]]]) -> list[Changes]:
        """Runs statements (each a str or (str, params)) in one transaction: all apply or
        none do; the error's message starts with `statement N:`."""
        if _sql is None:
            raise _missing("tessera:sql")
        items = []
        for s in statements:
            text, params = (s, ()) if isinstance(s, str) else s
            items.append(_sql.Statement(text, _sql_params(params)))
        return [Changes(c.rows_affected, c.last_insert_id) for c in _sql_call(_sql.batch, items)]


sql = _SQL()


# --------------------------------------------------------------------------- config

class _Config:
    """The service's configuration (`[services.NAME.config]` in the manifest, with the
    environment's overrides) and its secrets (`tessera secret set`), as strings."""

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of `key`, or `default` if it is not set."""
        if _config is None:
            raise _missing("wasi:config")
        try:
            value = _config.get(key)
        except _Err as e:
            raise ConfigError(_variant(e.value)[1]) from None
        return default if value is None else value

    def get_all(self) -> dict[str, str]:
        if _config is None:
            raise _missing("wasi:config")
        try:
            return dict(_config.get_all())
        except _Err as e:
            raise ConfigError(_variant(e.value)[1]) from None


config = _Config()


# --------------------------------------------------------------------------- events

def publish(topic: str, data: Union[bytes, str, dict, list], content_type: Optional[str] = None) -> str:
    """Publishes a message to `topic` of the app; returns its id (subscribers get it as
    `ce-id`). A dict or list is sent as JSON. The message goes out only if the current
    request completes with a status below 500."""
    if _producer is None:
        raise _missing("tessera:messaging")
    if isinstance(data, (dict, list)):
        data = _json.dumps(data, separators=(",", ":"))
        content_type = content_type or "application/json"
    elif isinstance(data, str):
        content_type = content_type or "text/plain; charset=utf-8"
    try:
        return _producer.publish(topic, _to_bytes(data), content_type)
    except _Err as e:
        raise PublishError(*_variant(e.value)) from None
