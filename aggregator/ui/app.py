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
- the login form has its own double-submit token; failed logins are audited.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
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

from aggregator import evidence
from aggregator.broadcast.outbox import deliveries as list_deliveries
from aggregator.config import AggregatorConfig
from aggregator.manager import ACTIONS, SILENCE_FIELDS, STATUSES, Manager, QueueFilter
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
HERE = Path(__file__).resolve().parent


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
    except ValueError:
        raise InputError(f"not a time: {text[:40]!r} (use 2026-11-16 or 2026-11-16T08:00)") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def create_app(cfg: AggregatorConfig) -> Flask:
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
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
            local.manager = Manager(connect_manager(cfg.store))
        return local.store

    def manager() -> Manager:
        store()
        return local.manager

    # -- who is asking ---------------------------------------------------------------------

    @app.before_request
    def identify():
        g.api = request.path.startswith("/api/")
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
        if g.api:
            return jsonify(error=message), code
        return render_template("error.html", message=message, user=g.user), code

    @app.errorhandler(InputError)
    def bad_input(e: InputError):
        return _refuse(400, str(e))

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
            token = request.cookies.get(LOGIN_COOKIE, "")[:64] or secrets.token_urlsafe(24)
            response = Response(render_template("login.html", user=None, csrf=token, error="",
                                                next=request.args.get("next", "/")))  # fmt: skip
            response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=secure, max_age=600)
            return response
        sent, cookie = request.form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
        if not sent or not cookie or not secrets.compare_digest(sent, cookie):
            return _refuse(403, "the login form expired; reload it")
        got = manager().login(request.form.get("name", "")[:64], request.form.get("password", "")[:1024])
        if got is None:
            token = secrets.token_urlsafe(24)
            response = Response(render_template("login.html", user=None, csrf=token, error="wrong name or password",
                                                next=request.form.get("next", "/")), status=401)  # fmt: skip
            response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=secure, max_age=600)
            return response
        session, _ = got
        target = request.form.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        response = redirect(target)
        response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", secure=secure, max_age=12 * 3600)
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
        a["history"] = [x for x in manager().audit_log(2000) if _mentions(x["target"], alert_id)]
        a["flows"] = _flow_rows(a["body"])
        return a

    @app.get("/alerts/<int:alert_id>")
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
        manager().audit(g.user.name, "packets request", f"alert {alert_id}", f"pcap job {job_id}")
        return job_id

    @app.get("/alerts/<int:alert_id>/packets")
    def packets(alert_id: int):
        return page("packets.html", p=packets_view(alert_id))

    @app.post("/alerts/<int:alert_id>/packets")
    def packets_request(alert_id: int):
        request_packets(alert_id)
        return redirect(f"/alerts/{alert_id}/packets")

    @app.get("/api/alerts/<int:alert_id>/packets")
    def api_packets(alert_id: int):
        return jsonify(packets_view(alert_id))

    @app.post("/api/alerts/<int:alert_id>/packets")
    def api_packets_request(alert_id: int):
        return jsonify(job=request_packets(alert_id))

    @app.get("/pcap-jobs/<int:job_id>/download")
    @app.get("/api/pcap-jobs/<int:job_id>/download")
    def packets_download(job_id: int):
        packets_allowed()
        try:
            j = evidence.job(manager().db, job_id)
        except InputError:
            abort(404)
        if j["state"] != "done" or not Path(j["file"]).is_file():
            raise InputError(f"pcap job {job_id} is {j['state']}: nothing to download yet")
        what = f"pcap job {job_id}: {j['packets']} packets, {j['bytes']} bytes, sha256 {j['sha256']}"
        manager().audit(g.user.name, "packets download", f"alert {j['alert_id']}" if j["alert_id"] else "host", what)
        name = f"alert-{j['alert_id']}.pcap" if j["alert_id"] else f"job-{job_id}.pcap"
        return send_file(j["file"], mimetype="application/vnd.tcpdump.pcap", as_attachment=True, download_name=name)

    @app.get("/api/alerts/<int:alert_id>")
    def api_alert(alert_id: int):
        return jsonify(one_alert(alert_id))

    def act(values) -> int:
        ids = values.getlist("id") if hasattr(values, "getlist") else values.get("id", [])
        ids = [ids] if isinstance(ids, int | str) else ids
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise InputError("alert ids must be whole numbers") from None
        return manager().act(ids, str(values.get("action", "")), g.user, str(values.get("comment", ""))[:2000],
                             str(values.get("assignee", "")))  # fmt: skip

    @app.post("/alerts/action")
    def action():
        act(request.form)
        back = request.form.get("back", "/")
        return redirect(back if back.startswith("/") and not back.startswith("//") else "/")

    @app.post("/api/alerts/action")
    def api_action():
        return jsonify(changed=act(request.get_json(silent=True) or {}))

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
        return {"ip": ip, "alerts": alerts, "kinds": kinds}

    @app.get("/hosts/<ip>")
    def host(ip: str):
        return page("host.html", h=host_view(ip))

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
        matchers = {k: str(values.get(k)).strip() for k in SILENCE_FIELDS if values.get(k)}
        try:
            hours = float(values.get("hours") or 0)
        except (TypeError, ValueError):
            raise InputError("hours must be a number") from None
        if not 0 < hours <= 366 * 24:
            raise InputError("a silence lasts from a minute to a year (hours)")
        return manager().silence(matchers, time.time() + hours * 3600, str(values.get("reason", "")), g.user)

    @app.get("/silences")
    def silences():
        return page("silences.html", silences=manager().silences(), prefill=request.args)

    @app.post("/silences")
    def silence():
        create_silence(request.form)
        return redirect(url_for("silences"))

    @app.post("/silences/<int:silence_id>/revoke")
    def revoke(silence_id: int):
        manager().revoke(silence_id, g.user, request.form.get("comment", ""))
        return redirect(url_for("silences"))

    @app.route("/api/silences", methods=["GET", "POST"])
    def api_silences():
        if request.method == "POST":
            return jsonify(id=create_silence(request.get_json(silent=True) or {})), 201
        return jsonify(silences=manager().silences())

    @app.post("/api/silences/<int:silence_id>/revoke")
    def api_revoke(silence_id: int):
        body = request.get_json(silent=True) or {}
        manager().revoke(silence_id, g.user, str(body.get("comment", "")))
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

    @app.get("/deliveries")
    def deliveries():
        status = request.args.get("status") or None
        return page("deliveries.html", rows=list_deliveries(manager().db, status), status=status or "")

    @app.get("/api/deliveries")
    def api_deliveries():
        return jsonify(deliveries=list_deliveries(manager().db, request.args.get("status") or None))

    @app.get("/audit")
    def audit():
        return page("audit.html", rows=manager().audit_log())

    @app.get("/api/audit")
    def api_audit():
        return jsonify(audit=manager().audit_log())

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


def _mentions(target: str, alert_id: int) -> bool:
    if not target.startswith("alert "):
        return False
    return str(alert_id) in target[6:].replace(" ...", "").split(",")


def serve(cfg: AggregatorConfig) -> None:
    """Serve the alert manager with waitress until interrupted."""
    from waitress import serve as waitress_serve

    host, _, port = cfg.ui_listen.rpartition(":")
    waitress_serve(create_app(cfg), host=host.strip("[]"), port=int(port), threads=8, ident="ntds")
