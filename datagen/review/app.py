"""`datagen review`: the review page's server, a Starlette app on uvicorn bound to 127.0.0.1 only.

Every request needs the token the command printed (`?token=` or `Authorization: Bearer`), else 401. The page is
static HTML, a script and a stylesheet from datagen/review/static/, served with a Content-Security-Policy that allows
no other script, and it reads and writes through the JSON API below; every value from the store reaches it as JSON
and is put into the page as text.

The store is opened for each request and closed after it, so `datagen curate` and `datagen export` can run beside
the page. While another process holds the store (a running `datagen run`: DuckDB has one writer and no readers
beside it), the page reads a copy of it, refreshed every few seconds, and refuses changes with 409.
"""

from __future__ import annotations

import hmac
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs

from datagen.errors import UserError
from datagen.review import agreement, story
from datagen.spec.plan import Plan
from datagen.store import human
from datagen.store.connection import StoreInUse, open_store
from datagen.store.review import RowFilter, snapshot

HOST = "127.0.0.1"
STATIC = Path(__file__).with_name("static")
ASSETS = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
SNAPSHOT_SECONDS = 10  # how stale the copy of a held store may get
MAX_TEXT = 200_000  # characters of an edited reply
MAX_REASON = 2_000
HEADERS = [  # on every response, 401s included
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                 b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class ReadOnly(UserError):
    """A change asked for while another process holds the store."""


class StoreAccess:
    """The store, opened per request; a copy of it while another process holds it."""

    def __init__(self, path: Path, workdir: Path):
        self.path, self.workdir = path, workdir
        self.lock = threading.Lock()  # one connection at a time: DuckDB refuses two configurations in one process
        self.held_by: str | None = None
        self.copy: Path | None = None
        self.copied_at = 0.0

    @contextmanager
    def read(self):
        with self.lock:
            try:
                con = open_store(self.path, read_only=True)
                self.held_by = None
            except StoreInUse as exc:
                self.held_by = exc.holder
                con = open_store(self._copy(), read_only=True)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def write(self):
        with self.lock:
            try:
                con = open_store(self.path)
                self.held_by = None
            except StoreInUse as exc:
                self.held_by = exc.holder
                raise ReadOnly(f"read-only: {exc.holder} holds the store (a running `datagen run`), so nothing was "
                               "saved; try again when it has finished") from None
            try:
                yield con
            finally:
                con.close()

    def _copy(self) -> Path:
        if self.copy is None or time.monotonic() - self.copied_at > SNAPSHOT_SECONDS:
            self.copy = snapshot(self.path, self.workdir)
            self.copied_at = time.monotonic()
        return self.copy

    def state(self) -> dict:
        if self.held_by is None:
            return {"read_only": False, "why": None}
        return {"read_only": True, "why": f"{self.held_by} holds the store (a running `datagen run`): this page shows "
                                          f"a copy of it at most {SNAPSHOT_SECONDS} s old and saves nothing until "
                                          "it has finished"}


class Guard:
    """ASGI middleware: 401 without the token; security headers on every response."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + HEADERS}
            await send(message)

        if not self._allowed(scope):
            from starlette.responses import JSONResponse

            reply = JSONResponse({"error": "missing or wrong token: open the address `datagen review` printed "
                                           "(it ends in ?token=...)"}, status_code=401)
            return await reply(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)

    def _allowed(self, scope) -> bool:
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[-1].encode()
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        return hmac.compare_digest(given, self.token)


def make_app(plan: Plan, access: StoreAccess, token: str, reviewer: str):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    async def answer(fn, *args) -> JSONResponse:
        try:
            return JSONResponse(await run_in_threadpool(fn, *args))
        except ReadOnly as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:  # our bug, not the user's: the page says so instead of failing silently
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc} (please report it)"},
                                status_code=500)

    async def body_of(request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise UserError("send the body as JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except ValueError as exc:
            raise UserError(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise UserError(f"the body must be a JSON object, got {type(body).__name__}")
        return body

    def posting(fn):
        async def endpoint(request):
            try:
                body = await body_of(request)
            except UserError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return await answer(fn, body)
        return endpoint

    async def index(request):
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{token}}", token))

    async def asset(request):
        name = request.path_params["name"]
        if name not in ASSETS:
            return JSONResponse({"error": f"no file {name}"}, status_code=404)
        return Response((STATIC / name).read_bytes(), media_type=ASSETS[name])

    def overview():
        with access.read() as con:
            return {"name": plan.spec.name, "description": plan.spec.description, "reviewer": reviewer,
                    "store": str(plan.loaded.store_path), "relations": story.relations(plan, con),
                    "funnel": story.funnel(plan, con),
                    "agreement": [a.as_dict() | {"line": a.line()} for a in agreement.judge_agreement(con, plan)],
                    **access.state()}

    def rows(params):
        rel, f, offset, limit = parse_rows(params)
        with access.read() as con:
            return story.row_page(plan, con, rel, f, offset, limit) | access.state()

    def row(row_id):
        with access.read() as con:
            return story.story(plan, con, row_id) | access.state()

    def decide(body):
        row_id, reason = _row_id(body), _text(body, "reason", MAX_REASON, required=False)
        kept = body.get("kept")
        if not isinstance(kept, bool):
            raise UserError(f"`kept` must be true or false, got {kept!r}")
        if not kept and not reason:
            raise UserError("a drop needs a reason: say why the row goes")
        with access.write() as con:
            _check_row(plan, con, row_id)
            human.add_decision(con, row_id, kept, reason, reviewer)
        return {"ok": True, "row_id": row_id, "kept": kept, "reason": reason, "reviewer": reviewer}

    def rate(body):
        row_id, note = _row_id(body), _text(body, "note", MAX_REASON, required=False)
        verdict, score = parse_rating(body)
        with access.write() as con:
            _check_row(plan, con, row_id)
            human.add_rating(con, row_id, reviewer, verdict, score, note)
        return {"ok": True, "row_id": row_id, "verdict": verdict, "score": score, "reviewer": reviewer}

    def edit(body):
        row_id, text = _row_id(body), _text(body, "text", MAX_TEXT, required=True)
        reason = _text(body, "reason", MAX_REASON, required=False)
        with access.write() as con:
            st, column = story.editable(plan, con, row_id)
            revision = human.add_revision(con, row_id, st.name, column, text, reviewer, reason)
        return {"ok": True, "row_id": row_id, "revision_id": revision, "reviewer": reviewer}

    async def get_overview(request):
        return await answer(overview)

    async def get_rows(request):
        return await answer(rows, request.query_params)

    async def get_row(request):
        return await answer(row, request.path_params["row_id"])

    routes = [
        Route("/", index),
        Route("/static/{name}", asset),
        Route("/api/overview", get_overview),
        Route("/api/rows", get_rows),
        Route("/api/row/{row_id}", get_row),
        Route("/api/decisions", posting(decide), methods=["POST"]),
        Route("/api/ratings", posting(rate), methods=["POST"]),
        Route("/api/edits", posting(edit), methods=["POST"]),
    ]
    # the host check stops a page elsewhere from reaching this server under another name (DNS rebinding)
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"]),
                                                Middleware(Guard, token=token)])


def _row_id(body: dict) -> str:
    row_id = body.get("row_id")
    if not isinstance(row_id, str) or not row_id.strip():
        raise UserError(f"`row_id` must be a row's `_id` (text), got {row_id!r}")
    return row_id.strip()


def _text(body: dict, key: str, limit: int, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise UserError(f"`{key}` must be {'non-empty ' if required else ''}text, got {value!r}")
    if len(value) > limit:
        raise UserError(f"`{key}` is {len(value):,} characters; at most {limit:,}")
    if key == "text":
        return value  # a reply's own spacing is part of it
    return value.strip() or None


def _check_row(plan: Plan, con, row_id: str) -> None:
    if human.row_exists(con, row_id, list(plan.source_columns)) is None:
        raise UserError(f"no row with id {row_id} in this store")


def parse_rating(body: dict) -> tuple[bool | None, float | None]:
    """(verdict, score) from {"verdict": "pass" | "fail"} or {"score": 1-5}: one of the two."""
    verdict, score = body.get("verdict"), body.get("score")
    if (verdict is None) == (score is None):
        raise UserError('a rating is {"verdict": "pass" or "fail"} or {"score": 1 to 5}: give exactly one')
    if verdict is not None:
        if verdict not in ("pass", "fail"):
            raise UserError(f'`verdict` must be "pass" or "fail", got {verdict!r}')
        return verdict == "pass", None
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise UserError(f"`score` must be a whole number from 1 to 5, got {score!r}")
    return None, float(score)


def _number(params, key: str) -> float | None:
    value = params.get(key) or None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise UserError(f"`{key}` must be a number, got {value!r}") from None


def parse_rows(params) -> tuple[str, RowFilter, int, int]:
    rel = params.get("rel")
    if not rel:
        raise UserError("say which rows: ?rel=STEP, a source or curated")
    status = params.get("status") or "all"
    if status not in ("all", "kept", "dropped"):
        raise UserError(f"`status` must be all, kept or dropped, got {status!r}")
    try:
        offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 50)
    except ValueError:
        raise UserError("`offset` and `limit` must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= 500:
        raise UserError(f"`offset` must be >= 0 and `limit` from 1 to 500, got {offset} and {limit}")
    f = RowFilter(kept=None if status == "all" else status == "kept", stage=params.get("stage") or None,
                  reason=params.get("reason") or None, score_min=_number(params, "score_min"),
                  score_max=_number(params, "score_max"), text=params.get("q") or None)
    return rel, f, offset, limit


def prepare(plan: Plan) -> str | None:
    """Bring the store up to date (migrations, views) as `datagen curate` does; who holds it, if another process
    does (then the page reads a copy)."""
    from datagen.store.views import sync_views

    path = plan.loaded.store_path
    if not path.exists():
        raise UserError(f"no store at {path}; run `datagen run` on the spec first")
    try:
        con = open_store(path)
    except StoreInUse as exc:
        return exc.holder
    try:
        sync_views(con, plan.source_tables, plan.views)
    finally:
        con.close()
    return None


def bind(port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 to 65535 (0: any free port), got {port}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {HOST}:{port} ({exc.strerror}); pass another --port, or --port 0 for "
                        "any free one") from None
    return sock


def serve(plan: Plan, port: int, reviewer: str, on_ready: Callable[[str, str | None], None]) -> None:
    """Serve the page until Ctrl-C or SIGTERM. `on_ready(url, holder)` is called once it listens (`holder`: the
    process that holds the store, when one does)."""
    import secrets

    import uvicorn

    reviewer = reviewer.strip()
    if not reviewer or len(reviewer) > 100:
        raise UserError(f"--reviewer must be a name of 1 to 100 characters, got {reviewer!r}")
    holder = prepare(plan)
    token = secrets.token_urlsafe(24)
    sock = bind(port)
    with tempfile.TemporaryDirectory(prefix="datagen-review-") as tmp:
        access = StoreAccess(plan.loaded.store_path, Path(tmp))
        access.held_by = holder
        app = make_app(plan, access, token, reviewer)
        # no access log: it would write the token (the query string) into the terminal and any log of it
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        on_ready(f"http://{HOST}:{sock.getsockname()[1]}/?token={token}", holder)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stops cleanly, then passes Ctrl-C or SIGTERM on
            pass
        finally:
            sock.close()
