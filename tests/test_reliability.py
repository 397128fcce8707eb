"""Contention, outages and exposure: SQLite writers wait for another writer's lock, transient database errors are
retried within a budget (others are not), and a local cluster listens on the loopback interface only."""

from __future__ import annotations

import sqlite3
import threading

import psutil
import pytest
from sqlalchemy import event, func, select, update

from atomscreen.campaign import ClusterSpec
from atomscreen.compute.dispatch import Cluster
from atomscreen.store import DatabaseUnavailable, add_campaign, make_engine, migrate, retry, transaction
from atomscreen.store.models import Campaign


def hold_lock(path, seconds: float, locked: threading.Event) -> threading.Thread:
    """Another process's writer, as `sqlite3 DB 'BEGIN EXCLUSIVE; ...'` would be: holds the write lock ``seconds``."""
    def run() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        threading.Event().wait(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert locked.wait(10)
    return thread


def read_then_write(engine) -> None:
    """The driver's pattern (read the task row, then update it): deferred, it would fail at once on a held lock."""
    with transaction(engine) as session:
        campaign = session.scalar(select(Campaign).where(Campaign.name == "lock"))
        session.execute(update(Campaign).where(Campaign.id == campaign.id).values(status="running"))


def lock_db(tmp_path, busy_timeout_ms: int | None = None):
    path = tmp_path / "lock.db"
    engine = make_engine(f"sqlite:///{path}")
    if busy_timeout_ms is not None:
        event.listen(engine, "connect", lambda conn, _: conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}"))
    migrate.upgrade(engine)
    with transaction(engine) as session:
        add_campaign(session, "lock", "name: lock\n")
    return path, engine


def test_sqlite_read_then_write_waits_for_another_writer_instead_of_failing(tmp_path):
    path, engine = lock_db(tmp_path)
    thread = hold_lock(path, 2.0, threading.Event())
    read_then_write(engine)  # BEGIN IMMEDIATE waits in busy_timeout (30 s) for the lock, then writes
    thread.join()
    with transaction(engine) as session:
        assert session.scalar(select(Campaign.status)) == "running"


def test_a_lock_held_past_the_busy_timeout_is_retried_with_backoff_then_named(tmp_path):
    path, engine = lock_db(tmp_path, busy_timeout_ms=50)
    waits = []
    thread = hold_lock(path, 1.5, threading.Event())
    retry(lambda: read_then_write(engine), "marking the campaign", log=waits.append)
    thread.join()
    assert waits and all("marking the campaign: database unavailable (database is locked)" in w for w in waits)

    thread = hold_lock(path, 3.0, threading.Event())
    with pytest.raises(DatabaseUnavailable, match=r"marking the campaign: the database was unavailable for \d+ s "
                                                  r"\(database is locked\)$"):
        retry(lambda: read_then_write(engine), "marking the campaign", budget_s=1.0)
    thread.join()


def test_errors_that_waiting_cannot_cure_are_raised_at_once(tmp_path):
    from sqlalchemy.exc import IntegrityError

    _, engine = lock_db(tmp_path)
    calls = []

    def duplicate() -> None:
        calls.append(1)
        with transaction(engine) as session:
            session.add(Campaign(name="lock", spec="", spec_hash="x"))

    with pytest.raises(IntegrityError):
        retry(duplicate, "adding a campaign")
    assert calls == [1]
    with transaction(engine) as session:
        assert session.scalar(select(func.count(Campaign.id))) == 1


def test_local_cluster_scheduler_workers_and_dashboard_listen_on_loopback_only():
    cluster = Cluster(ClusterSpec(n_workers=1), dashboard_address=":0")
    try:
        client = cluster.get()
        assert client.scheduler_info()["workers"]
        pids = {psutil.Process().pid} | {p.pid for p in psutil.Process().children(recursive=True)}
        listening = [c.laddr for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert listening, "found no listening socket of the cluster"
        assert {a.ip for a in listening} == {"127.0.0.1"}, listening
        assert cluster.dashboard.startswith("http://127.0.0.1:")
    finally:
        cluster.close()


def test_sql_is_built_from_parameters_and_no_subprocess_uses_a_shell():
    """An AST scan of the package: no f-string or concatenation reaches an SQL-executing call, no shell=True. The
    migrations' CREATE/DROP VIEW of constant names are the only formatted SQL (checked to use module constants)."""
    import ast

    from conftest import REPO

    sql_calls = {"text", "exec_driver_sql", "execute", "executescript"}
    found = []
    for path in sorted((REPO / "platform" / "atomscreen").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if any(k.arg == "shell" and getattr(k.value, "value", False) is True for k in node.keywords):
                found.append(f"{path.name}:{node.lineno}: shell=True")
            if name in sql_calls and node.args and isinstance(node.args[0], (ast.JoinedStr, ast.BinOp)):
                found.append(f"{path.name}:{node.lineno}: formatted SQL in {name}()")
    assert found == []


def test_the_database_password_is_not_stored_in_the_campaign_record():
    from atomscreen.compute.lifecycle import same_spec, without_password

    text = "name: x\ndatabase: postgresql+psycopg://alice:s3cret@db.example/atomscreen\nseed: 1\n"
    stored = without_password(text)
    assert "s3cret" not in stored and "alice:***@db.example" in stored
    assert same_spec(stored, without_password(text))
    assert without_password("name: x\nseed: 1\n") == "name: x\nseed: 1\n"


def _self_signed(folder):
    """A certificate authority and one certificate it signed (openssl), PEM files: (ca, cert, key)."""
    import subprocess

    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "tls.key", "tls.csr", "tls.pem"))
    run = lambda *args: subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1", "-subj",
        "/CN=atomscreen-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1")
    return ca, cert, key


def test_a_tls_scheduler_is_reached_with_the_campaigns_credentials_and_refused_without(tmp_path):
    """A TLS-only scheduler and worker on loopback (distributed's Security); cluster.tls gives the client its
    certificates; without them the error says what to set."""
    from distributed import LocalCluster
    from distributed.security import Security

    from atomscreen.compute.progress import RunnerError

    ca, cert, key = _self_signed(tmp_path)
    server = Security(tls_ca_file=str(ca), tls_scheduler_cert=str(cert), tls_scheduler_key=str(key),
                      tls_worker_cert=str(cert), tls_worker_key=str(key), tls_client_cert=str(cert),
                      tls_client_key=str(key), require_encryption=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", security=server,
                      dashboard_address=None, host="127.0.0.1") as local:
        address = local.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        spec = ClusterSpec.model_validate({"scheduler": address, "tls": {"ca_file": "ca.pem", "cert": "tls.pem",
                                                                         "key": "tls.key"}},
                                          context={"base_dir": tmp_path})
        cluster = Cluster(spec)
        try:
            assert cluster.get().submit(sum, [1, 2, 3]).result() == 6
        finally:
            cluster.close()
        with pytest.raises(RunnerError, match="give cluster.tls"):
            Cluster(ClusterSpec(scheduler=address)).get()
