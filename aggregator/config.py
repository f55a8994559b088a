"""`config/aggregator.yaml`: read once, validated once, one clear line per mistake.

Each setting is declared once, below; `ntds.settings` does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ntds.settings import Settings, setting


def _receivers(value: list) -> str | None:
    from aggregator.broadcast.routes import parse_receivers

    try:
        parse_receivers(value, Path("."))
    except ValueError as e:
        return f"is not valid: {e}"
    return None


def _broadcast(value: dict) -> str | None:
    from aggregator.broadcast.outbox import BroadcastOptions

    for k, v in value.items():
        if k not in BroadcastOptions.MEANINGS:
            return f"has unknown key {k!r} (known: {', '.join(BroadcastOptions.MEANINGS)})"
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v <= 10**7:
            return f"{k} must be a positive number"
    return None


def _ui_login(value: dict) -> str | None:
    from aggregator.manager import LoginPolicy

    return LoginPolicy.problem(value)


def _sites(value: dict) -> str | None:
    from aggregator.prevalence import Sites

    return Sites.problem(value)


def _modifier(value: dict) -> str | None:
    from aggregator.prevalence import ModifierOptions

    return ModifierOptions.problem(value)


def _notice_kinds(value: list) -> str | None:
    from aggregator.host_story import NOTICE_KINDS

    bad = [v for v in value if v not in NOTICE_KINDS]
    return f"has unknown kind {bad[0]!r} (known: {', '.join(NOTICE_KINDS)})" if bad else None


def _listen(value: str) -> str | None:
    host, _, port = value.rpartition(":")
    return None if host and port.isdigit() and 0 < int(port) < 65536 else "must be HOST:PORT"


def _country(value: str) -> str | None:
    return None if len(value) == 2 and value.isalpha() and value.isupper() else "must be an ISO 3166 alpha-2 code"


@dataclass(frozen=True)
class AggregatorConfig(Settings):
    path: Path
    endpoint: str = setting("str", "tcp://127.0.0.1:5555", "where sensors connect")
    server_key: Path = setting(
        "path", "/etc/ntds/keys/server.key_secret", "the aggregator's CURVE secret key", must_exist=True, secret=True
    )
    allow_list: Path = setting(
        "path", "/etc/ntds/sensors", "folder of admitted sensors' public keys", must_exist=True, secret=True
    )
    baseline_signing_key: Path = setting(
        "path", "/etc/ntds/keys/baseline-signing.key", "the Ed25519 key `baseline promote` signs baselines with, and "
        "`intel add|remove|expire` indicator sets (`baseline keygen`); sensors hold its .pub as baseline_key",
        secret=True,
    )  # fmt: skip
    baseline_auto_promote: str = setting(
        "choice", "no", "yes: `baseline learn` promotes its candidate when every documented check passes "
        "(README: Baselines that learn); no: only with --promote or by hand", choices=("no", "yes"),
    )  # fmt: skip
    store: Path = setting("path", "/var/lib/ntds-aggregator/store.db", "the durable message store (SQLite)")
    archive: Path = setting("path", "", "the Parquet archive reports read (default: archive/ beside the store)")
    retention_days: int = setting("int", 400, "days of data kept, counted from arrival (0: everything)", low=0,
                                  high=36500)  # fmt: skip
    store_days: int = setting(
        "int", 30, "days of archived messages the store keeps for the alert manager, the outbox and the UI's "
        "recent views (alerts not closed are kept whatever their age; reports and learning read the archive); 0: as "
        "long as retention_days", low=0, high=36500,
    )  # fmt: skip
    archive_mirror: str = setting(
        "str", "", "an fsspec URL (s3://bucket/prefix) serve copies the archive to after every export, under "
        "source=<archive_mirror_name>/, for Dask workers elsewhere and for several aggregators' one archive; "
        "empty: none (README: A fleet past one aggregator)",
    )  # fmt: skip
    archive_mirror_name: str = setting(
        "str", "aggregator", "this aggregator's folder in the mirror (unique among the aggregators that mirror to "
        "one place)",
    )  # fmt: skip
    archive_mirror_options: dict = setting(
        "mapping", {}, "fsspec storage options of archive_mirror and of --archive URLs, e.g. {endpoint_url: "
        "https://minio.example:9000}; credentials from the environment (AWS_ACCESS_KEY_ID ...): check-config "
        "prints these options",
    )  # fmt: skip
    archive_interval_s: int = setting("int", 30, "seconds between archive exports while serving", low=1, high=86400)
    store_check_at_start_mb: int = setting(
        "int", 256, "a store up to this size is checked whole before serve starts; a larger one in the background",
        low=0, high=2**24,
    )  # fmt: skip
    shutdown_export_s: int = setting(
        "int", 15, "longest final archive export when `serve` stops (the rest goes out at the next start)", low=0,
        high=3600,
    )  # fmt: skip
    receive_queue: int = setting(
        "int", 100, "frames one sensor's connection may have waiting in serve's memory; past it the sensor's own "
        "queue and spool hold the rest (memory bounded by sensors x this x frame size; README: Overload)", low=1,
        high=100_000,
    )  # fmt: skip
    evidence_days: int = setting(
        "int", 30, "days the packets fetched from sensors (pcap jobs, evidence/ beside the store) are kept", low=1,
        high=36500,
    )  # fmt: skip
    evidence_mb: int = setting("int", 10240, "the fetched packets kept in all; the oldest files go first beyond it",
                               low=1, high=2**24)  # fmt: skip
    sensor_messages_per_s: int = setting(
        "int", 5000, "per sensor: messages accepted per second, in bursts of up to 10 seconds' worth; more are not "
        "acknowledged (the sensor keeps and resends them) and are counted as refusals (0: no limit)", low=0,
        high=1_000_000,
    )  # fmt: skip
    sensor_mb_per_day: int = setting(
        "int", 1024, "per sensor: MB of messages stored per UTC day; beyond it nothing of that sensor is "
        "acknowledged until the next day (it keeps and resends), counted as refusals (0: no limit)", low=0,
        high=10_000_000,
    )  # fmt: skip
    site_country: str = setting("str", "", "ISO code of the site's country: the world map's origin", check=_country)
    receivers: list = setting(
        "records", [], "where alerts can go: webhook, syslog, email, eve receivers (README: Broadcast)",
        check=_receivers,
    )  # fmt: skip
    routes: list = setting("records", [], "which alerts go to which receivers, grouped how (README: Broadcast)")
    broadcast: dict = setting(
        "mapping", {}, "delivery retries: max_attempts (12), backoff_s (5), max_backoff_s (600), keep_delivered_days "
        "(30); pages: page_alerts (500), page_bytes (2097152), dispatch_alerts (20000)", check=_broadcast,
    )  # fmt: skip
    ui_listen: str = setting("str", "127.0.0.1:8080", "where the alert manager (ntds-aggregator ui) listens",
                             check=_listen)  # fmt: skip
    ui_secure_cookies: str = setting(
        "choice", "auto", "session cookies marked Secure (HTTPS only): auto = unless the UI listens on loopback",
        choices=("auto", "yes", "no"),
    )  # fmt: skip
    reports: Path = setting("path", "/var/lib/ntds-aggregator/reports", "folder of weekly reports the UI lists")
    ui_login: dict = setting(
        "mapping", {}, "how logins are throttled: account_failures (5), address_failures (20), lock_s (60), "
        "max_lock_s (900), forget_s (3600), device_days (90), one_time_hours (24) (README: Alert manager)",
        check=_ui_login,
    )  # fmt: skip

    sites: dict = setting(
        "mapping", {}, "named groups of sensors, e.g. {campus: [tap-01, tap-02]}; a sensor in none is a site of its "
        "own (prevalence counts hosts per site and sites per destination)", check=_sites,
    )  # fmt: skip
    prevalence_modifier: dict = setting(
        "mapping", {}, "how prevalence moves an alert's tier (README: Context on every alert): rare_hosts (2), "
        "new_days (7), common_hosts (50), old_days (30)", check=_modifier,
    )  # fmt: skip
    notices_learning_days: int = setting(
        "int", 1, "days from a site's first context message during which nothing is news (no notices)", low=0,
        high=3650,
    )  # fmt: skip
    notices_alert: list = setting(
        "list", [], "notice kinds also stored as alerts (tier 1): new-host, new-service, new-application; empty: "
        "notices only", check=_notice_kinds,
    )  # fmt: skip

    @classmethod
    def finish(cls, path: Path, values: dict) -> dict:
        from aggregator.broadcast.routes import parse_receivers, parse_routes
        from ntds.errors import InputError

        try:
            receivers = parse_receivers(values["receivers"], path.resolve().parent)
            parse_routes(values["routes"], receivers)
        except ValueError as e:
            raise InputError(f"{path}: {e}") from None
        if not values["archive"]:  # beside the store, not in a system folder another aggregator may use
            values["archive"] = Path(values["store"]).parent / "archive"
        return values

    @property
    def login_policy(self):
        """The alert manager's login policy (`ui_login` over its defaults)."""
        from aggregator.manager import LoginPolicy

        return LoginPolicy(**self.ui_login)

    @property
    def broadcast_setup(self):
        """(routes, receivers, options) of the broadcast, validated."""
        from aggregator.broadcast.outbox import BroadcastOptions
        from aggregator.broadcast.routes import parse_receivers, parse_routes

        receivers = parse_receivers(self.receivers, self.path.resolve().parent)
        return parse_routes(self.routes, receivers), receivers, BroadcastOptions(**self.broadcast)


def load(path: str | Path, insecure: bool = False) -> AggregatorConfig:
    """The validated configuration; with insecure (the --insecure flag) no keys are needed."""
    return AggregatorConfig.load(path, insecure)
