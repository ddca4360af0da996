"""The review desk: a small web application for the experts who review answers.

``redis-llm web --url redis://...`` serves it. Experts sign in with a Redis
ACL user and password; each signed-in session has its own connection,
authenticated as that user, so every command the pages send runs with that
user's ACL rules, and another tenant's apps stay invisible (``LLM.LIST``) or
refused (``NOPERM``). The application talks to Redis only through the
``LLM.*`` commands, so it works the same against a replica set or a cluster.

The password is held in this process's memory for the session (redis-py
needs it to reconnect), never in a cookie or a page; the cookie is a random
session token. Pages are rendered on the server; the only script
(``static/desk.js``) adds keyboard shortcuts and watches a running result.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import flask
import redis
import redis.cluster
from werkzeug.exceptions import HTTPException

from redis_llm import charts, cli
from redis_llm.client import Client, decode_record
from redis_llm.client_errors import error_text
from redis_llm.records import BANDS, MAX_GUARD_QUESTIONS, STATES, band

APP_KINDS = ("app", "search", "chat")
PAGE_SIZE = 25
MAX_SKIPPED = 200            # ids a review queue remembers as skipped
MAX_TEXT = 1024              # LLM.RESULTS --TEXT
COOKIE = "llm_desk"
INTERVALS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 604_800_000}
MAX_COLUMNS = 400            # the most intervals an over-time chart draws
FAILED_SIGN_INS = 5          # per address and minute; then 429 until the minute has passed


class FormError(ValueError):
    """Input a page refuses, with the message to show next to the form."""


# ---- sessions -----------------------------------------------------------------

@dataclass
class Session:
    """A signed-in expert: their own Redis connection, a CSRF token, flash
    messages, and an idle deadline."""

    user: str
    client: Client
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    messages: list[tuple[str, str]] = field(default_factory=list)


class Sessions:
    """Sessions by token, kept in this process; idle ones expire."""

    def __init__(self, connect, idle_seconds: float):
        self._connect = connect
        self.idle_seconds = idle_seconds
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, user: str, password: str) -> str:
        """Sign in: a new session token, once Redis accepted the user and
        password (redis.AuthenticationError otherwise)."""
        user = user or "default"        # AUTH with a password alone is the default user's
        client = self._connect(user, password)
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sweep()
            self._by_token[token] = Session(user, client, time.monotonic() + self.idle_seconds)
        return token

    def get(self, token: str | None) -> tuple[Session | None, bool]:
        """The live session of ``token`` (its idle deadline moved on), and
        whether the token named a session that expired."""
        if not token:
            return None, False
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None, False
            if session.expires < time.monotonic():
                self._drop(token)
                return None, True
            session.expires = time.monotonic() + self.idle_seconds
            return session, False

    def close(self, token: str | None) -> None:
        with self._lock:
            self._drop(token)

    def _sweep(self) -> None:
        now = time.monotonic()
        for token in [t for t, s in self._by_token.items() if s.expires < now]:
            self._drop(token)

    def _drop(self, token: str | None) -> None:
        session = self._by_token.pop(token, None) if token else None
        if session is not None:
            session.client.redis.close()


class Throttle:
    """Failed sign-ins per client address, over the last minute: a password
    is not guessed at HTTP speed."""

    def __init__(self, most: int = FAILED_SIGN_INS, seconds: float = 60):
        self.most, self.seconds = most, seconds
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str) -> list[float]:
        since = time.monotonic() - self.seconds
        kept = [t for t in self._failures.get(address, []) if t > since]
        if kept:
            self._failures[address] = kept
        else:
            self._failures.pop(address, None)
        return kept

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address)) >= self.most

    def failed(self, address: str) -> None:
        with self._lock:
            self._failures[address] = self._recent(address) + [time.monotonic()]


def connector(url: str, cluster: bool = False):
    """A function (user, password) -> Client for the server at ``url``,
    once Redis has accepted the user and password (redis.AuthenticationError
    otherwise)."""
    def connect(user: str, password: str) -> Client:
        options = dict(username=user, password=password, socket_connect_timeout=5,
                       health_check_interval=30)
        if cluster:
            # Connecting to a cluster signs in to its nodes already.
            return Client(redis.cluster.RedisCluster.from_url(url, **options))
        client = redis.Redis.from_url(url, **options)
        authenticate(client)
        return Client(client)
    return connect


def authenticate(client: redis.Redis) -> None:
    """Sign in once more with the client's user and password, on a connection
    of its own, with AUTH alone: the user may be allowed the LLM.* commands
    only, not even PING. redis.AuthenticationError when Redis refuses."""
    pool = client.connection_pool
    probe = pool.connection_class(**pool.connection_kwargs)
    try:
        probe.connect()
    finally:
        probe.disconnect()


# ---- input --------------------------------------------------------------------

def parse_score(text: str | None) -> float:
    """A review score from a form: a number from 0 to 100."""
    if text is None or not text.strip():
        raise FormError("Give a score from 0 to 100.")
    try:
        score = float(text)
    except ValueError:
        raise FormError(f"The score must be a number from 0 to 100, not {text!r}.") from None
    if not math.isfinite(score) or not 0 <= score <= 100:
        raise FormError(f"The score must be from 0 to 100, not {text}.")
    return score


def parse_questions(text: str | None) -> list[str] | None:
    """A textarea of questions, one per line (blank lines skipped, repeats
    dropped); None when the form has no such field, so the stored list is
    kept, and [] when it is empty, so the stored list is cleared."""
    if text is None:
        return None
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def parse_review(form) -> dict:
    """The fields of a review form, checked: answer, score, notes, and the
    questions the answer also answers (also) and must never be served for
    (never)."""
    answer = (form.get("answer") or "").strip()
    if not answer:
        raise FormError("Write the reviewed answer (it may be the model's answer).")
    fields = {"answer": answer, "score": parse_score(form.get("score")),
              "notes": (form.get("notes") or "").strip() or None,
              "also": parse_questions(form.get("also")),
              "never": parse_questions(form.get("never"))}
    if len(fields["also"] or ()) + len(fields["never"] or ()) > MAX_GUARD_QUESTIONS:
        raise FormError(f"Give at most {MAX_GUARD_QUESTIONS} questions in both lists together.")
    return fields


REVIEW_FIELDS = ("answer", "score", "notes", "also", "never")  # a review form's fields


def review_form(record: dict) -> dict:
    """A review form's fields, filled from ``record``: its review, else the
    model's answer; its question lists, one question per line."""
    return {"answer": record["reviewed_answer"] or record["answer"] or "",
            "score": "" if record["reviewed_score"] is None else f"{record['reviewed_score']:g}",
            "notes": record["reviewed_notes"] or "",
            "also": "\n".join(record["also"]), "never": "\n".join(record["never"])}


def parse_id(text: str | None) -> int:
    if text is None or not text.isdigit() or not 0 < int(text) < 2**63:
        raise FormError(f"Not a result id: {text!r}.")
    return int(text)


def _date(text: str, name: str) -> int:
    """Unix ms of the UTC midnight starting the date YYYY-MM-DD."""
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise FormError(f"{name} must be a date (YYYY-MM-DD), not {text!r}.") from None
    return int(day.timestamp() * 1000)


def parse_filters(args) -> tuple[dict, int]:
    """The LLM.RESULTS filters of a results page's query string, and its page."""
    get = lambda name: (args.get(name) or "").strip()  # noqa: E731
    filters: dict = {}
    if get("q"):
        if len(get("q").encode()) > MAX_TEXT:
            raise FormError(f"The search text is at most {MAX_TEXT} bytes.")
        filters["text"] = get("q")
    if get("state"):
        if get("state") not in STATES:
            raise FormError(f"The state must be one of {', '.join(STATES)}.")
        filters["state"] = get("state")
    reviewed = get("reviewed")
    if reviewed not in ("", "yes", "no"):
        raise FormError("Reviewed must be yes, no or empty.")
    if reviewed:
        filters["reviewed"] = reviewed == "yes"
    for name in ("model", "tag", "session"):
        if get(name):
            filters[name] = get(name)
    for name, option in (("min", "min_score"), ("max", "max_score")):
        if get(name):
            try:
                filters[option] = parse_score(get(name))
            except FormError:
                raise FormError(f"The {name}imum score must be a number from 0 to 100.") from None
    if filters.get("min_score", 0) > filters.get("max_score", 100):
        raise FormError("The minimum score is above the maximum score.")
    if get("from"):
        filters["since"] = _date(get("from"), "From")
    if get("to"):
        filters["until"] = _date(get("to"), "To") + INTERVALS["day"]   # the whole day
    if filters.get("since", 0) >= filters.get("until", 2**62):
        raise FormError("From must be on or before To.")
    page = get("page") or "1"
    if not page.isdigit() or not 1 <= int(page) <= 10_000:
        raise FormError("The page must be a number from 1 to 10000.")
    return filters, int(page)


def parse_vars(text: str) -> dict | None:
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FormError(f"Variables must be a JSON object: {exc}.") from None
    if not isinstance(value, dict):
        raise FormError("Variables must be a JSON object, such as {\"name\": \"Ada\"}.")
    return value


def error_status(text: str) -> int:
    """The HTTP status of a Redis error reply, by its code."""
    code = text.split(" ", 1)[0]
    return 403 if code == "NOPERM" else 409 if code == "WRONGTYPE" else 400


# ---- presentation ---------------------------------------------------------------

def when(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def band_name(score) -> str:
    """The band of a score (a number or a form's text); empty when it is none."""
    try:
        score = float(score)
    except (TypeError, ValueError):
        return ""
    return band(score) if 0 <= score <= 100 else ""


def band_class(score: float | None) -> str:
    return "" if score is None else "band-" + str([low for _, low in BANDS if score >= low][-1])


def _interval_label(start: int, interval: int) -> str:
    moment = dt.datetime.fromtimestamp(start / 1000, dt.timezone.utc)
    if interval >= INTERVALS["day"]:
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%m-%d %H:%M")


def over_time_points(over_time, interval: int) -> list[tuple[str, tuple[int, int]]]:
    """LLM.STATS over_time as chart points, empty intervals filled in; at
    most MAX_COLUMNS (the newest)."""
    if not over_time:
        return []
    counts = {start: (results, reviewed) for start, results, reviewed in over_time}
    last = over_time[-1][0]
    first = max(over_time[0][0], last - (MAX_COLUMNS - 1) * interval)
    return [(_interval_label(start, interval), counts.get(start, (0, 0)))
            for start in range(first, last + interval, interval)]


def dashboard_charts(stats: dict, interval: int) -> dict:
    models = stats["models"]

    def per_model(value):
        return [(name or "(unknown)", value(m)) for name, m in sorted(models.items())]
    return {
        "over_time": charts.columns("over-time", "Results and reviewed results over time",
                                    over_time_points(stats["over_time"], interval),
                                    ("results", "reviewed")),
        "bands": charts.bars("bands", "Reviewed results per confidence band",
                             [(f"{name} ({low}+)", stats["by_band"].get(name, 0))
                              for name, low in BANDS]),
        "score": charts.bars("model-score", "Mean review score per model",
                             per_model(lambda m: m["mean_score"]), top=100),
        "latency": charts.bars("model-latency", "Mean latency per model",
                               per_model(lambda m: m["mean_latency_ms"]), unit=" ms"),
        # LLM.RECORD carries no token counts: a model without any has no data.
        "tokens": charts.bars("model-tokens", "Mean tokens per result, per model",
                              per_model(lambda m: (m["prompt_tokens"] + m["completion_tokens"])
                                        / m["results"]
                                        if m["prompt_tokens"] + m["completion_tokens"] else None)),
    }


# ---- the application ------------------------------------------------------------

def create_app(url: str, *, cluster: bool = False, session_minutes: float = 30,
               behind_proxy: bool = False) -> flask.Flask:
    """The review desk for the Redis server (or cluster) at ``url``.
    ``behind_proxy``: trust one reverse proxy's X-Forwarded-* headers (TLS
    ends there, and the cookie is marked Secure)."""
    redis.connection.parse_url(url)     # a malformed URL: ValueError now, not at sign-in
    app = flask.Flask(__name__)
    if behind_proxy:
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    app.config["MAX_CONTENT_LENGTH"] = 8 * 1024 * 1024
    sessions = Sessions(connector(url, cluster), session_minutes * 60)
    throttle = Throttle()
    app.jinja_env.filters.update(when=when, band=band_name, band_class=band_class)
    app.jinja_env.globals.update(BANDS=BANDS, STATES=STATES, INTERVALS=INTERVALS)

    def current() -> Session:
        return flask.g.session

    def flash(message: str, kind: str = "info") -> None:
        current().messages.append((kind, message))

    def render(template: str, status: int = 200, **context):
        session = getattr(flask.g, "session", None)
        messages = session.messages[:] if session else []
        if session:
            session.messages.clear()
        context.setdefault("app_key", None)
        return flask.render_template(template, session=session, messages=messages,
                                     **context), status

    def signed_in(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            session, expired = sessions.get(flask.request.cookies.get(COOKIE))
            if session is None:
                target = flask.url_for("login", next=flask.request.full_path.rstrip("?"),
                                       expired=1 if expired else None)
                return flask.redirect(target)
            flask.g.session = session
            if flask.request.method == "POST" and not secrets.compare_digest(
                    flask.request.form.get("csrf", ""), session.csrf):
                flask.abort(400, "The form is out of date; reload the page and send it again.")
            return view(*args, **kwargs)
        return wrapper

    def app_arg() -> str:
        key = flask.request.values.get("app", "")
        if not key:
            flask.abort(400, "Which app? The address has no app= parameter.")
        return key

    def client() -> Client:
        return current().client

    @app.before_request
    def same_origin():
        # Forms are posted from the desk's own pages; a browser names the
        # page's origin. This also covers sign-in, which has no CSRF token.
        origin = flask.request.headers.get("Origin")
        if flask.request.method == "POST" and origin is not None and \
                origin != flask.request.host_url.rstrip("/"):
            flask.abort(400, "This form was sent from another site.")

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    # One place turns failures into pages (or JSON, for the script's
    # requests); Redis' error replies keep their code.
    def failure(status: int, title: str, text: str):
        if flask.request.path.endswith(".json"):
            return flask.jsonify(error=text), status
        return render("error.html", status, title=title, error=text)

    @app.errorhandler(redis.AuthenticationError)
    def auth_lost(exc):
        sessions.close(flask.request.cookies.get(COOKIE))
        return flask.redirect(flask.url_for("login", expired=1))

    @app.errorhandler(redis.ResponseError)
    def refused(exc):
        text = error_text(exc)
        return failure(error_status(text), "Redis refused", text)

    @app.errorhandler(redis.RedisError)
    def unreachable(exc):
        # Redis drops the connections of a user it deletes: then the session
        # is over, and that is no outage.
        session = getattr(flask.g, "session", None)
        if isinstance(exc, redis.ConnectionError) and session is not None and \
                isinstance(session.client.redis, redis.Redis):
            try:
                authenticate(session.client.redis)
            except redis.AuthenticationError:
                return auth_lost(exc)
            except redis.RedisError:
                pass
        return failure(503, "Redis is unreachable", f"Cannot talk to Redis at {url}: {exc}")

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if flask.request.path.startswith("/static/"):
            return exc
        return failure(exc.code or 500, exc.name, exc.description)

    # ---- sign-in ----
    @app.route("/login", methods=["GET", "POST"])
    def login():
        target = flask.request.values.get("next") or flask.url_for("apps")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = flask.url_for("apps")     # no redirects off this site ("/\\x" is "//x")
        error = "Your session expired; sign in again." if flask.request.args.get("expired") else None
        user = ""
        if flask.request.method == "POST":
            user = flask.request.form.get("user", "").strip()
            password = flask.request.form.get("password", "")
            address = flask.request.remote_addr or ""
            if throttle.blocked(address):
                return render("login.html", 429, error="Too many failed sign-ins from this "
                              "address; wait a minute.", user=user, next=target)
            try:
                token = sessions.open(user, password)
            except redis.AuthenticationError:
                throttle.failed(address)
                return render("login.html", 401, error="Wrong user name or password.", user=user,
                              next=target)
            except redis.ResponseError as exc:
                return render("login.html", 401, error=error_text(exc), user=user, next=target)
            except redis.RedisError as exc:
                return render("login.html", 503, error=f"Cannot reach Redis at {url}: {exc}",
                              user=user, next=target)
            response = flask.redirect(target)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict",
                                secure=flask.request.is_secure)
            return response
        return render("login.html", 401 if error else 200, error=error, user=user, next=target)

    @app.post("/logout")
    @signed_in
    def logout():
        sessions.close(flask.request.cookies.get(COOKIE))
        response = flask.redirect(flask.url_for("login"))
        response.delete_cookie(COOKIE)
        return response

    # ---- the apps this user may read ----
    @app.get("/")
    @signed_in
    def apps():
        rows = []
        for kind in APP_KINDS:
            for key, _ in client().list_keys(type=kind):
                rows.append((key.decode("utf-8", "replace"), kind))
        rows.sort()
        listed = []
        for key, kind in rows:
            stats = client().stats(key)
            listed.append({"key": key, "kind": kind, "records": stats["records"],
                           "reviewed": stats["reviewed"], "done": stats["by_state"]["done"],
                           "mean_score": stats["mean_score"]})
        return render("apps.html", apps=listed)

    # ---- the review queue ----
    def _skipped() -> list[str]:
        text = flask.request.values.get("skip", "")
        ids = [part for part in text.split(",") if part.isdigit()]
        return ids[-MAX_SKIPPED:]

    @app.route("/review", methods=["GET"])
    @signed_in
    def review_queue():
        key = app_arg()
        skipped = _skipped()
        record = cli.next_unreviewed(client().redis, key, set(skipped), decode=decode_record)
        return render("review.html", app_key=key, record=record, skipped=skipped,
                      form=review_form(record) if record else {},
                      skip_next=",".join(skipped + ([str(record["id"])] if record else [])))

    @app.post("/review")
    @signed_in
    def review_submit():
        key = app_arg()
        form = flask.request.form
        back = form.get("back", "queue")
        try:
            rid = parse_id(form.get("id"))
        except FormError as exc:
            flask.abort(400, str(exc))
        try:
            fields = parse_review(form)
            client().review(key, rid, answer=fields["answer"], score=fields["score"],
                            notes=fields["notes"], also=fields["also"], never=fields["never"])
        except (FormError, redis.ResponseError) as exc:
            # Refused: the same form again, with what was typed and why.
            message = str(exc) if isinstance(exc, FormError) else error_text(exc)
            record = client().result(key, rid)
            if record is None:
                flask.abort(404, f"No result {rid} in app {key}.")
            template = "record.html" if back == "record" else "review.html"
            skipped = _skipped()
            return render(template, error_status(message), app_key=key, record=record,
                          skipped=skipped,
                          skip_next=",".join(skipped + [str(rid)]), error=message,
                          form={**{name: form.get(name, "") for name in REVIEW_FIELDS},
                                # A list the form did not send is kept: show it.
                                **{name: form.get(name, review_form(record)[name])
                                   for name in ("also", "never")}})
        flash(f"Reviewed result {rid}: {fields['score']:g}, {band(fields['score'])}.", "ok")
        if back == "record":
            return flask.redirect(flask.url_for("record", app=key, id=rid))
        return flask.redirect(flask.url_for("review_queue", app=key,
                                            skip=",".join(_skipped()) or None))

    # ---- results ----
    @app.get("/results")
    @signed_in
    def results():
        key = app_arg()
        query = {name: flask.request.args.get(name, "") for name in
                 ("q", "state", "reviewed", "model", "tag", "session", "min", "max", "from", "to")}
        try:
            filters, page = parse_filters(flask.request.args)
        except FormError as exc:
            return render("results.html", 400, app_key=key, query=query, rows=[], page=1,
                          more=False, error=str(exc), pager=None)
        rows = client().results(key, count=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE, **filters)
        more = len(rows) > PAGE_SIZE

        def pager(n):
            return "?" + urlencode({"app": key, **{k: v for k, v in query.items() if v},
                                    "page": n})
        return render("results.html", app_key=key, query=query, rows=rows[:PAGE_SIZE], page=page,
                      more=more, pager=pager)

    def requested_record() -> tuple[str, dict]:
        key = app_arg()
        try:
            rid = parse_id(flask.request.args.get("id"))
        except FormError as exc:
            flask.abort(400, str(exc))
        found = client().result(key, rid)
        if found is None:
            flask.abort(404, f"No result {rid} in app {key}.")
        return key, found

    @app.get("/record")
    @signed_in
    def record():
        key, found = requested_record()
        return render("record.html", app_key=key, record=found, form=review_form(found),
                      skipped=[], skip_next="")

    @app.get("/record.json")
    @signed_in
    def record_json():
        return flask.jsonify(requested_record()[1])

    # ---- dashboard and export ----
    @app.get("/dashboard")
    @signed_in
    def dashboard():
        key = app_arg()
        name = flask.request.args.get("interval", "hour")
        if name not in INTERVALS:
            flask.abort(400, f"The interval must be one of {', '.join(INTERVALS)}.")
        stats = client().stats(key, interval=INTERVALS[name])
        return render("dashboard.html", app_key=key, stats=stats, interval=name,
                      charts=dashboard_charts(stats, INTERVALS[name]))

    @app.get("/export")
    @signed_in
    def export():
        key = app_arg()
        fmt = flask.request.args.get("format", "jsonl")
        if fmt not in ("jsonl", "csv"):
            flask.abort(400, "The format must be jsonl or csv.")
        reviewed = flask.request.args.get("reviewed") == "1"
        out = io.StringIO()
        # The same writer as `redis-llm export`, so the files are the same.
        cli.export(client().redis, key, reviewed=reviewed, fmt=fmt, stdout=out)
        # An ASCII file name: header values are Latin-1.
        name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in key)
        suffix = "-reviewed" if reviewed else ""
        return flask.Response(out.getvalue(), mimetype="text/csv" if fmt == "csv"
                              else "application/jsonl", headers={
                                  "Content-Disposition":
                                      f'attachment; filename="{name}{suffix}.{fmt}"'})

    # ---- ask ----
    @app.route("/ask", methods=["GET", "POST"])
    @signed_in
    def ask():
        key = app_arg()
        form = {name: flask.request.form.get(name, "") for name in
                ("input", "vars", "session", "tags", "mode")}
        if flask.request.method == "GET":
            return render("ask.html", app_key=key, form={**form, "mode": "async"})
        try:
            variables = parse_vars(form["vars"])
            if form["mode"] not in ("sync", "async"):
                raise FormError("Choose to wait for the answer or to run in the background.")
            options = dict(vars=variables, session=form["session"].strip() or None,
                           tags=[t.strip() for t in form["tags"].split(",") if t.strip()] or None)
            text = form["input"].strip() or None
            if form["mode"] == "async":
                rid = client().run(key, text, async_=True, **options)
            else:
                details = client().run(key, text, verbose=True, **options)
                rid = details["record"]
                if rid is None:
                    return render("ask.html", app_key=key, form=form, answer=details["answer"])
        except (FormError, redis.ResponseError, ValueError) as exc:
            message = error_text(exc) if isinstance(exc, redis.ResponseError) else str(exc)
            return render("ask.html", error_status(message), app_key=key, form=form,
                          error=message)
        return flask.redirect(flask.url_for("record", app=key, id=rid))

    return app


def serve(url: str, host: str = "127.0.0.1", port: int = 8080, cluster: bool = False,
          session_minutes: float = 30, behind_proxy: bool = False) -> None:
    """Serve the review desk (threads: a slow LLM.RUN holds only its own request)."""
    from werkzeug.serving import make_server
    desk = create_app(url, cluster=cluster, session_minutes=session_minutes,
                      behind_proxy=behind_proxy)
    server = make_server(host, port, desk, threaded=True)
    print(f"redis-llm web: the review desk of {url} is on http://{host}:{server.port}/",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
