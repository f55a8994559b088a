"""The alert manager: a place to triage alerts, as a Flask application served by waitress.

Server-rendered pages and a JSON API over the same functions (`/api/...`), on
the aggregator's store. Operators log in (accounts from `ntds-aggregator
user`), or scripts send `Authorization: Bearer TOKEN` (`user token`).

Security, as a SOC tool that renders attacker-controlled strings needs:
- every page is a Jinja2 template with autoescaping, and every value passes
  through `printable` (control characters shown as escapes); no page runs
  script, and the Content-Security-Policy says so (`script-src 'none'`);
- session cookies are HttpOnly, SameSite=Strict and Secure unless the UI only
  listens on loopback (`ui_secure_cookies`); sessions live in the store
  (logging out or changing a password ends them);
- every state change (form or API) needs the session's CSRF token (a form
  field or the X-CSRF-Token header), or a bearer token; a viewer can change
  nothing (403);
- the login form has its own double-submit token; logins are throttled per
  account, address and device (`LoginPolicy`) and logged apart from the
  audit log (`/logins`);
- bad input of any kind (a path, a parameter, a JSON body) is a 4xx with one
  line, a full disk a 503 with one line, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    send_from_directory,
    url_for,
)
from markupsafe import Markup
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, ValidationError

from aggregator import context, evidence, host_story, prevalence
from aggregator.broadcast.outbox import deliveries as list_deliveries
from aggregator.config import AggregatorConfig
from aggregator.manager import ACTIONS, ID_MAX, NAME_MAX, SILENCE_FIELDS, STATUSES, Manager, QueueFilter
from aggregator.manager import connect as connect_manager
from aggregator.sensors import describe
from aggregator.store import Store
from ntds.detect.explain import duration, size
from ntds.detect.scoring import TIER_LABELS
from ntds.errors import InputError
from ntds.logs import printable
from ntds.networks import protocol_name

COOKIE = "ntds_session"
LOGIN_COOKIE = "ntds_login"
DEVICE_COOKIE = "ntds_device"
HERE = Path(__file__).resolve().parent
PAGE = 100
"""Audit and login rows per page (limit= up to PAGE_MAX)."""
PAGE_MAX = 1000
log = logging.getLogger("ntds.aggregator")


class IdConverter(BaseConverter):
    """A row id in a path: 1 to 19 digits, at most 2^63-1 (anything else is no such page: 404)."""

    regex = r"\d{1,19}"

    def to_python(self, value: str) -> int:
        n = int(value)
        if not 1 <= n <= ID_MAX:
            raise ValidationError()
        return n

    def to_url(self, value) -> str:
        return str(int(value))


def _when(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _shown(value):
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, 100_000)
    return value


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.strip())
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        raise InputError(f"not a time: {printable(text, 40)!r} (use 2026-11-16 or 2026-11-16T08:00)") from None


def _local(target: object) -> str:
    """Where to go after a form: a path on this site, or the queue (never another site, never a header break)."""
    if (not isinstance(target, str) or len(target) > 2000 or not target.startswith("/") or target[1:2] in ("/", "\\")
            or not target.isprintable() or any(c.isspace() for c in target)):  # fmt: skip
        return "/"
    return target


def _text(values, key: str, limit: int = 2000, default: str = "") -> str:
    """A text field of a form or a JSON object (a number, a list or an object is refused)."""
    value = values.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InputError(f"{key} must be text")
    return value[:limit]


def _whole(values, key: str, low: int, high: int, default: int | None = None) -> int | None:
    """A whole number parameter within [low, high]."""
    value = values.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 19:
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"{key} must be a whole number from {low} to {high}")
    return value


def _json_body() -> dict:
    """The request's JSON object ({} for no body); anything else is bad input."""
    data = request.get_data(cache=True)
    if not data.strip():
        return {}

    def constant(name: str):
        raise InputError(f"{name} is not a number JSON allows")

    try:
        body = json.loads(data, parse_constant=constant)
    except (ValueError, RecursionError):
        raise InputError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object")
    return body


def create_app(cfg: AggregatorConfig) -> Flask:
    context_options = context.ContextOptions.of(cfg)
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    app.url_map.converters["id"] = IdConverter
    host = cfg.ui_listen.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    secure = cfg.ui_secure_cookies == "yes" or (cfg.ui_secure_cookies == "auto" and not loopback)
    local = threading.local()
    app.jinja_env.finalize = _shown
    app.jinja_env.filters["when"] = _when
    app.jinja_env.filters["duration"] = lambda s: duration((s or 0) * 1e6)
    app.jinja_env.filters["size"] = size
    app.jinja_env.filters["thousands"] = lambda v: f"{v:,}" if isinstance(v, int) else v
    app.jinja_env.filters["protocol"] = lambda n: protocol_name(n) if isinstance(n, int) else n
    app.jinja_env.globals.update(tier_labels=TIER_LABELS, actions=ACTIONS, statuses=STATUSES,
                                 silence_fields=SILENCE_FIELDS)  # fmt: skip

    def store() -> Store:
        if getattr(local, "store", None) is None:
            local.store = Store(cfg.store)
            context.ensure(local.store.db)
            local.manager = Manager(connect_manager(cfg.store), cfg.login_policy)
        return local.store

    def manager() -> Manager:
        store()
        return local.manager

    # -- who is asking ---------------------------------------------------------------------

    @app.before_request
    def identify():
        g.api = request.path.startswith("/api/")
        for db in (store().db, manager().db):  # a request that failed half-way left nothing open
            if db.in_transaction:
                db.execute("ROLLBACK")
        g.user = None
        g.bearer = False
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            g.user = manager().user_for(auth[7:].strip(), "api")
            g.bearer = g.user is not None
        else:
            g.user = manager().user_for(request.cookies.get(COOKIE, ""), "session")
        if request.endpoint in ("login", "metrics", "favicon"):
            return None
        if g.user is None:
            if g.api:
                return jsonify(error="not logged in"), 401
            return redirect(url_for("login", next=request.full_path if request.method == "GET" else "/"))
        if request.method not in ("GET", "HEAD"):
            if not g.bearer and not Manager.csrf_ok(g.user, request.headers.get("X-CSRF-Token")
                                                     or request.form.get("csrf")):  # fmt: skip
                return _refuse(403, "missing or wrong CSRF token")
            if not g.user.can_change and request.endpoint != "logout":
                return _refuse(403, f"{g.user.name} is a {g.user.role}: read-only")
        return None

    def _refuse(code: int, message: str):
        message = " ".join(str(message).split())  # one line
        if getattr(g, "api", request.path.startswith("/api/")):
            return jsonify(error=message), code
        return render_template("error.html", message=message, user=getattr(g, "user", None)), code

    @app.errorhandler(InputError)
    def bad_input(e: InputError):
        return _refuse(400, str(e))

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if e.code is None or e.code < 400:
            return e
        response = _refuse(e.code, f"{e.code} {e.name}: {e.description}")
        if e.code == 405:
            response = (response[0], response[1], {"Allow": ", ".join(e.valid_methods or ())})
        return response

    @app.errorhandler(sqlite3.OperationalError)
    def store_error(e: sqlite3.OperationalError):
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_FULL:
            why = "the store's disk is full: nothing was changed (free some space, then try again)"
        elif code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            why = "the store is busy: nothing was changed (try again)"
        elif code == sqlite3.SQLITE_IOERR:
            why = f"the store cannot be written ({e}): nothing was changed"
        else:
            return unexpected(e)
        log.error("%s %s answered 503: %s", request.method, printable(request.path, 100), why)
        response = _refuse(503, why)
        return response[0], 503, {"Retry-After": "60"}

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        if isinstance(e, HTTPException):
            return http_error(e)
        log.exception("%s %s failed", request.method, printable(request.path, 100))
        return _refuse(500, f"internal error ({type(e).__name__}); the UI's log has the details")

    @app.errorhandler(Forbidden)
    def forbidden(e: Forbidden):
        return _refuse(403, str(e))

    @app.errorhandler(404)
    def not_found(_):
        return _refuse(404, "no such page or alert")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; script-src 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def page(name: str, **values):
        return render_template(name, user=g.user, **values)

    # -- login ------------------------------------------------------------------------------

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if request.method == "GET":
            # the same token while the form is open: another tab or a favicon fetch must not invalidate it
            token = request.cookies.get(LOGIN_COOKIE, "")[:64]
            token = token if token.isascii() and token.isprintable() else ""
            token = token or secrets.token_urlsafe(24)
            response = Response(render_template("login.html", user=None, csrf=token, error="",
                                                next=_local(request.args.get("next", "/"))))  # fmt: skip
            response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=secure, max_age=600)
            return response
        sent, cookie = request.form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
        if not sent or not cookie or not secrets.compare_digest(sent.encode(), cookie.encode()):
            return _refuse(403, "the login form expired; reload it")
        target = _local(request.form.get("next", "/"))
        got = manager().login(request.form.get("name", "")[:NAME_MAX + 1], request.form.get("password", "")[:1024],
                              request.remote_addr or "", request.cookies.get(DEVICE_COOKIE, ""))  # fmt: skip
        if not got.ok:
            token = secrets.token_urlsafe(24)
            if got.outcome == "locked":
                error = f"too many failed logins: try again in {max(1, round(got.retry_after))} s"
            elif got.outcome == "expired":
                error = "this one-time password has expired: ask for a new one"
            else:
                error = "wrong name or password"
            response = Response(render_template("login.html", user=None, csrf=token, error=error, next=target),
                                status=429 if got.outcome == "locked" else 401)  # fmt: skip
            if got.outcome == "locked":
                response.headers["Retry-After"] = str(max(1, round(got.retry_after)))
            response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=secure, max_age=600)
            return response
        response = redirect(target)
        response.set_cookie(COOKIE, got.token, httponly=True, samesite="Strict", secure=secure, max_age=12 * 3600)
        if got.device:  # this browser now counts its own failed logins for the account, apart from everyone else
            response.set_cookie(DEVICE_COOKIE, got.device, httponly=True, samesite="Strict", secure=secure,
                                max_age=int(cfg.login_policy.device_days * 86400), path="/login")  # fmt: skip
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    @app.post("/logout")
    def logout():
        manager().logout(request.cookies.get(COOKIE, ""))
        response = redirect(url_for("login"))
        response.delete_cookie(COOKIE)
        return response

    # -- the queue --------------------------------------------------------------------------

    def queue_filter(args) -> QueueFilter:
        try:
            tier = int(args.get("min_tier") or 0)
            limit = int(args.get("limit") or 200)
        except ValueError:
            raise InputError("min_tier and limit must be whole numbers") from None
        if not 0 <= tier <= 5 or not 1 <= limit <= 5000:
            raise InputError("min_tier must be 0..5 and limit 1..5000")
        status = args.get("status") or "open"
        if status not in ("open", "all", *STATUSES):
            raise InputError(f"status must be open, all or one of {', '.join(STATUSES)}")
        return QueueFilter(
            sensor=(args.get("sensor") or "")[:64], kind=(args.get("kind") or "")[:32],
            host=(args.get("host") or "").strip()[:64], application=(args.get("application") or "")[:128],
            min_tier=tier, since=_parse_time(args.get("since")), until=_parse_time(args.get("until")),
            status=status, silenced=args.get("silenced") in ("1", "on", "true"), limit=limit,
        )  # fmt: skip

    @app.get("/")
    def queue():
        f = queue_filter(request.args)
        groups = manager().queue(f)
        kinds = [k for (k,) in manager().db.execute("SELECT DISTINCT kind FROM alerts ORDER BY kind")]
        sensors = [s for (s,) in manager().db.execute("SELECT DISTINCT sensor FROM alerts ORDER BY sensor")]
        return page("queue.html", groups=groups, f=request.args, kinds=kinds, sensors=sensors,
                    total=sum(x["alerts"] for x in groups))  # fmt: skip

    @app.get("/api/queue")
    def api_queue():
        return jsonify(groups=manager().queue(queue_filter(request.args)))

    @app.get("/api/alerts")
    def api_alerts():
        return jsonify(alerts=manager().alerts(queue_filter(request.args)))

    def one_alert(alert_id: int) -> dict:
        a = manager().alert(alert_id)
        if a is None:
            abort(404)
        host = QueueFilter(host=a["src_ip"], status="all", limit=200) if a["src_ip"] else None
        a["timeline"] = manager().alerts(host) if host else []
        a["sensor_status"] = _sensor(a["sensor"])
        a["history"] = manager().history(alert_id)
        a["flows"] = _flow_rows(a["body"])
        a["context"] = context.of_alert(store().db, context_options, alert_id, a["body"])
        return a

    @app.get("/alerts/<id:alert_id>")
    def alert(alert_id: int):
        return page("alert.html", a=one_alert(alert_id))

    # -- packets (a permission of their own: they hold payloads) ----------------------------

    def packets_allowed() -> None:
        if not g.user.can_download_packets:
            raise Forbidden(f"{g.user.name} ({g.user.role}) may not download packets")

    def packets_view(alert_id: int) -> dict:
        packets_allowed()
        one_alert(alert_id)  # 404 for an unknown alert
        found = evidence.jobs(manager().db, alert_id, limit=1)
        return {"alert_id": alert_id, "job": _job_shown(found[0]) if found else None}

    def request_packets(alert_id: int) -> int:
        packets_allowed()
        one_alert(alert_id)
        job_id = evidence.request_for_alert(manager().db, alert_id, g.user.name)
        manager().audit(g.user.name, "packets request", f"alert {alert_id}", f"pcap job {job_id}", alerts=[alert_id])
        return job_id

    @app.get("/alerts/<id:alert_id>/packets")
    def packets(alert_id: int):
        return page("packets.html", p=packets_view(alert_id))

    @app.post("/alerts/<id:alert_id>/packets")
    def packets_request(alert_id: int):
        request_packets(alert_id)
        return redirect(f"/alerts/{alert_id}/packets")

    @app.get("/api/alerts/<id:alert_id>/packets")
    def api_packets(alert_id: int):
        return jsonify(packets_view(alert_id))

    @app.post("/api/alerts/<id:alert_id>/packets")
    def api_packets_request(alert_id: int):
        return jsonify(job=request_packets(alert_id))

    @app.get("/pcap-jobs/<id:job_id>/download")
    @app.get("/api/pcap-jobs/<id:job_id>/download")
    def packets_download(job_id: int):
        packets_allowed()
        try:
            j = evidence.job(manager().db, job_id)
        except InputError:
            abort(404)
        if j["state"] != "done" or not Path(j["file"]).is_file():
            raise InputError(f"pcap job {job_id} is {j['state']}: nothing to download yet")
        what = f"pcap job {job_id}: {j['packets']} packets, {j['bytes']} bytes, sha256 {j['sha256']}"
        manager().audit(g.user.name, "packets download", f"alert {j['alert_id']}" if j["alert_id"] else "host", what,
                        alerts=[j["alert_id"]] if j["alert_id"] else [])  # fmt: skip
        name = f"alert-{j['alert_id']}.pcap" if j["alert_id"] else f"job-{job_id}.pcap"
        return send_file(j["file"], mimetype="application/vnd.tcpdump.pcap", as_attachment=True, download_name=name)

    @app.get("/api/alerts/<id:alert_id>")
    def api_alert(alert_id: int):
        return jsonify(one_alert(alert_id))

    def act(values) -> int:
        ids = values.getlist("id") if hasattr(values, "getlist") else values.get("id", [])
        return manager().act(ids, _text(values, "action", 32), g.user, _text(values, "comment"),
                             _text(values, "assignee", NAME_MAX + 1))  # fmt: skip

    @app.post("/alerts/action")
    def action():
        act(request.form)
        return redirect(_local(request.form.get("back", "/")))

    @app.post("/api/alerts/action")
    def api_action():
        return jsonify(changed=act(_json_body()))

    # -- hosts, sensors ----------------------------------------------------------------------

    def host_view(ip: str) -> dict:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InputError(f"{ip[:64]!r} is not an address") from None
        alerts = manager().alerts(QueueFilter(host=ip, status="all", limit=1000))
        kinds: dict[str, int] = {}
        for x in alerts:
            if x["src_ip"] == ip:
                kinds[x["kind"]] = kinds.get(x["kind"], 0) + 1
        db = store().db
        story = host_story.story(db, ip)
        if story is not None:
            for p in story["peers"]:
                found = prevalence.lookup(db, context_options.sites, "address", p["peer"])
                local = "a local host" if context.is_local_default(p["peer"]) else "not in the fleet's context yet"
                p["prevalence"] = prevalence.words(found) if found else local
        notices = host_story.notices(db, host=ip, limit=100)
        return {"ip": ip, "alerts": alerts, "kinds": kinds, "story": story, "notices": notices}

    @app.get("/hosts/<ip>")
    def host(ip: str):
        h = host_view(ip)
        traffic = h["story"]["traffic"] if h["story"] else []
        h["chart"] = host_story.chart_png(traffic, [(x["first_seen"], x["tier"]) for x in h["alerts"]],
                                          [n["time"] for n in h["notices"]])  # fmt: skip
        return page("host.html", h=h)

    @app.get("/api/hosts/<ip>")
    def api_host(ip: str):
        return jsonify(host_view(ip))

    def _sensor(name: str) -> dict | None:
        return next((s for s in sensor_rows() if s["sensor"] == name), None)

    def sensor_rows() -> list[dict]:
        now = time.time()
        rows = []
        for row in store().sensors():
            s = describe(row, now)
            rates = (
                store()
                .db.execute(
                    "SELECT received, body FROM messages WHERE sensor = ? AND type = 'health' ORDER BY id DESC LIMIT 2",
                    (s["sensor"],),
                )
                .fetchall()
            )
            s["packet_rate"] = s["drop_rate"] = None
            if len(rates) == 2:
                (t1, b1), (t0, b0) = rates
                b1, b0 = json.loads(b1), json.loads(b0)
                dt = max(t1 - t0, 1e-3)
                s["packet_rate"] = max(0.0, (b1["packets_seen"] - b0["packets_seen"]) / dt)
                s["drop_rate"] = max(0.0, (b1["packets_dropped"] - b0["packets_dropped"]) / dt)
            rows.append(s)
        return rows

    @app.get("/sensors")
    def sensors():
        return page("sensors.html", sensors=sensor_rows())

    @app.get("/api/sensors")
    def api_sensors():
        return jsonify(sensors=sensor_rows())

    # -- silences ----------------------------------------------------------------------------

    def create_silence(values) -> int:
        matchers = {k: _text(values, k, 256).strip() for k in SILENCE_FIELDS if values.get(k)}
        hours = values.get("hours") or 0
        try:
            if isinstance(hours, bool) or not isinstance(hours, int | float | str):
                raise ValueError
            hours = float(hours)
        except (ValueError, OverflowError):
            raise InputError("hours must be a number") from None
        if not 0 < hours <= 366 * 24:
            raise InputError("a silence lasts from a minute to a year (hours)")
        return manager().silence(matchers, time.time() + hours * 3600, _text(values, "reason"), g.user)

    @app.get("/silences")
    def silences():
        return page("silences.html", silences=manager().silences(), prefill=request.args)

    @app.post("/silences")
    def silence():
        create_silence(request.form)
        return redirect(url_for("silences"))

    @app.post("/silences/<id:silence_id>/revoke")
    def revoke(silence_id: int):
        manager().revoke(silence_id, g.user, _text(request.form, "comment"))
        return redirect(url_for("silences"))

    @app.route("/api/silences", methods=["GET", "POST"])
    def api_silences():
        if request.method == "POST":
            return jsonify(id=create_silence(_json_body())), 201
        return jsonify(silences=manager().silences())

    @app.post("/api/silences/<id:silence_id>/revoke")
    def api_revoke(silence_id: int):
        manager().revoke(silence_id, g.user, _text(_json_body(), "comment"))
        return jsonify(revoked=silence_id)

    # -- reports, deliveries, audit -------------------------------------------------------

    def report_list() -> list[dict]:
        root = Path(cfg.reports)
        if not root.is_dir():
            return []
        out = []
        for d in sorted(root.iterdir(), reverse=True):
            if (d / "report.html").is_file():
                out.append({"name": d.name, "built": (d / "report.html").stat().st_mtime})
        return out

    @app.get("/reports")
    def reports():
        return page("reports.html", reports=report_list())

    @app.get("/api/reports")
    def api_reports():
        return jsonify(reports=report_list())

    @app.get("/reports/<name>/<path:file>")
    def report_file(name: str, file: str):
        if name not in {r["name"] for r in report_list()}:
            abort(404)
        return send_from_directory(Path(cfg.reports) / name, file)

    def delivery_status() -> str | None:
        status = request.args.get("status") or None
        if status not in (None, "pending", "delivered", "failed"):
            raise InputError("status must be pending, delivered or failed")
        return status

    @app.get("/deliveries")
    def deliveries():
        status = delivery_status()
        return page("deliveries.html", rows=list_deliveries(manager().db, status), status=status or "")

    @app.get("/api/deliveries")
    def api_deliveries():
        return jsonify(deliveries=list_deliveries(manager().db, delivery_status()))

    def audit_view() -> dict:
        args = request.args
        f = {"user": _text(args, "user", NAME_MAX), "action": _text(args, "action", 64),
             "alert": _whole(args, "alert", 1, ID_MAX), "before": _whole(args, "before", 1, ID_MAX),
             "limit": _whole(args, "limit", 1, PAGE_MAX, PAGE)}  # fmt: skip
        rows = manager().audit_log(**f)
        return {"audit": rows, "next": rows[-1]["id"] if len(rows) == f["limit"] else None, "filter": f}

    @app.get("/audit")
    def audit():
        return page("audit.html", **audit_view())

    @app.get("/api/audit")
    def api_audit():
        v = audit_view()
        return jsonify(audit=v["audit"], next=v["next"])

    def logins_view() -> dict:
        args = request.args
        f = {"name": _text(args, "name", NAME_MAX + 1), "outcome": _text(args, "outcome", 16),
             "before": _whole(args, "before", 1, ID_MAX),
             "limit": _whole(args, "limit", 1, PAGE_MAX, PAGE)}  # fmt: skip
        rows = manager().login_log(**f)
        return {"logins": rows, "next": rows[-1]["id"] if len(rows) == f["limit"] else None, "filter": f,
                "locks": manager().locks()}  # fmt: skip

    @app.get("/logins")
    def logins():
        return page("logins.html", **logins_view())

    @app.get("/api/logins")
    def api_logins():
        v = logins_view()
        return jsonify(logins=v["logins"], next=v["next"], locks=v["locks"])

    @app.get("/api/me")
    def me():
        return jsonify(name=g.user.name, role=g.user.role, csrf=g.user.csrf if not g.bearer else "",
                       packets=g.user.can_download_packets)  # fmt: skip

    @app.get("/metrics")
    def metrics():
        from aggregator.ui.metrics import exposition

        return Response(exposition(store(), manager()), mimetype="text/plain; version=0.0.4")

    return app


class Forbidden(Exception):
    """A request the user's permissions do not cover (403, with the reason)."""


def _job_shown(j: dict) -> dict:
    """A pcap job as the page and the API show it (no file path: where the store lives is nobody's business)."""
    keys = ("id", "state", "error", "sensor", "packets", "packets_total", "bytes", "source", "sha256", "created",
            "requested_by")  # fmt: skip
    return {k: j[k] for k in keys} | {"received": j.get("received", 0), "parts": j["parts"]}


def _flow_rows(body: dict) -> list[dict]:
    """The flows behind an alert, with their durations, for the alert page."""
    out = []
    for f in body.get("flows") or []:
        try:
            seconds = (datetime.fromisoformat(f["last_seen"].replace("Z", "+00:00"))
                       - datetime.fromisoformat(f["first_seen"].replace("Z", "+00:00"))).total_seconds()  # fmt: skip
        except (KeyError, ValueError):
            seconds = 0.0
        out.append(f | {"duration_s": max(seconds, 0.0)})
    return out


def serve(cfg: AggregatorConfig) -> None:
    """Serve the alert manager with waitress until interrupted."""
    from waitress import serve as waitress_serve

    host, _, port = cfg.ui_listen.rpartition(":")
    waitress_serve(create_app(cfg), host=host.strip("[]"), port=int(port), threads=8, ident="ntds")
