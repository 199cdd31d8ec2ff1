"""psycopg 3 side of pgshift's driver compatibility test (integration/tests/drivers.rs).

Phases: p0 opens the long-lived sessions, gives them state and checks it; after a line on
standard input, p1 checks that state again and runs every stand-alone check on new
connections; after another line, p2 checks the sessions once more. The test may switch
pgshift's backends (INITIATE CUTOVER, ROLLBACK UPGRADE) while the script waits."""

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psycopg
from psycopg import errors

from common import (
    CHANNEL, DB, DB2, GID, HOST, KOI8R_NEW, KOI8R_QUERY, KOI8R_SEED, LATIN1_NEW, LATIN1_QUERY,
    LATIN1_SEED, MD5_PASSWORD, MD5_USER, NOTIFY_WAIT, PASSWORD, PORT, ROLE_A, ROLE_B, SCHEMA,
    SUPER_PASSWORD, SUPER_USER, USER, Skip, describe, digest_rows, info, run_check, wait_go,
)

S = SCHEMA
PREPARED_SQL = "SELECT /* chk_prepared */ %s::int * 2, current_setting('work_mem')"
# How many named server-side statements of the session hold PREPARED_SQL.
PREPARED_COUNT_SQL = ("SELECT count(*)::int FROM pg_prepared_statements WHERE statement LIKE '%%chk\\_prepared%%' "
                      "AND statement NOT LIKE '%%pg\\_prepared\\_statements%%'")


def connect(user=USER, password=PASSWORD, dbname=DB, autocommit=True, **kw):
    return psycopg.connect(host=HOST, port=PORT, user=user, password=password, dbname=dbname,
                           autocommit=autocommit, connect_timeout=10, **kw)


def scalar(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def visible_ids(conn):
    return [r[0] for r in conn.execute("SELECT id FROM public.rls_docs ORDER BY id")]


def who(conn):
    cu, su = conn.execute("SELECT current_user::text, session_user::text").fetchone()
    return {"current_user": cu, "session_user": su, "visible_ids": visible_ids(conn)}


# ---------------------------------------------------------------- long-lived sessions

class Sessions:
    def __init__(self):
        # The application session: a server-side prepared statement, SETs, SET ROLE, LISTEN.
        self.app = connect()
        self.app.execute("SET work_mem = '3MB'")
        self.app.execute("SET application_name = 'driver-checks'")
        self.app.execute("SET chk.tag = 'kept'")
        self.app.execute(f"SET ROLE {ROLE_A}")
        self.app.execute(f"LISTEN {CHANNEL}")
        # A superuser session that became another role for good.
        self.auth = connect(SUPER_USER, SUPER_PASSWORD)
        self.auth.execute(f"SET SESSION AUTHORIZATION {ROLE_B}")
        # Sessions whose client_encoding (a start-up parameter) is not UTF8.
        self.latin1 = connect(client_encoding="LATIN1")
        self.koi8r = connect(client_encoding="KOI8R")

    def check(self, phase):
        run_check(phase, "session_notify_from_other", self.notify_from_other)
        run_check(phase, "session_prepared_statement", self.prepared)
        run_check(phase, "session_settings", self.settings)
        run_check(phase, "session_set_role", lambda: who(self.app))
        run_check(phase, "session_authorization", lambda: who(self.auth))
        run_check(phase, "session_latin1",
                  lambda: self.encoded(self.latin1, 1, LATIN1_SEED))
        run_check(phase, "session_koi8r",
                  lambda: self.encoded(self.koi8r, 2, KOI8R_SEED))
        run_check(phase, "session_notify_self", self.notify_self)
        info(phase, "server_major", scalar(self.app, "SELECT current_setting('server_version_num')::int / 10000"))

    def stale(self):
        """Notifications that arrived before this check asked for one (none are expected)."""
        return len(list(self.app.notifies(timeout=0)))

    def notify_from_other(self):
        # Sent from a new session while this one idles: after a switch, the idle listener
        # must still be listening (and told the sender's pid as its driver knows it).
        stale = self.stale()
        with connect() as other:
            other.execute(f"NOTIFY {CHANNEL}, 'from another session'")
            sender = other.info.backend_pid
        got = list(self.app.notifies(timeout=NOTIFY_WAIT, stop_after=1))
        if not got:
            return {"received": False, "stale": stale}
        n = got[0]
        return {"received": True, "stale": stale, "channel_matches": n.channel == CHANNEL, "payload": n.payload,
                "sender_pid_matches": n.pid == sender,
                "own_pid_matches": n.pid == self.app.info.backend_pid}

    def notify_self(self):
        stale = self.stale()
        self.app.execute(f"NOTIFY {CHANNEL}, 'from myself'")
        got = list(self.app.notifies(timeout=NOTIFY_WAIT, stop_after=1))
        if not got:
            return {"received": False, "stale": stale}
        n = got[0]
        return {"received": True, "stale": stale, "payload": n.payload,
                "own_pid_matches": n.pid == self.app.info.backend_pid}

    def prepared(self):
        # prepare=True: a named statement, parsed once (p0) and only bound afterwards.
        row = self.app.execute(PREPARED_SQL, (21,), prepare=True).fetchone()
        return {"row": list(row), "named_on_server": scalar(self.app, PREPARED_COUNT_SQL)}

    def settings(self):
        c = self.app
        return {"work_mem": scalar(c, "SHOW work_mem"),
                "application_name": scalar(c, "SHOW application_name"),
                "chk.tag": scalar(c, "SELECT current_setting('chk.tag')")}

    @staticmethod
    def encoded(conn, row_id, expect):
        body = scalar(conn, f"SELECT body FROM {S}.texts WHERE id = %s", (row_id,))
        return {"client_encoding": scalar(conn, "SHOW client_encoding"),
                "body": body, "body_equal": body == expect}


# ---------------------------------------------------------------- stand-alone checks

def login(user, password):
    with connect(user, password) as c:
        r = c.execute("SELECT current_user::text, session_user::text, current_database()::text").fetchone()
        return {"current_user": r[0], "session_user": r[1], "database": r[2],
                "backend_pid_known": c.info.backend_pid != 0}


def wrong_password():
    try:
        connect(password="not-the-password").close()
        return {"connected": True}
    except psycopg.OperationalError as e:
        # libpq keeps a start-up error's SQLSTATE to itself: the message is what there is.
        return describe(e)


def extended_protocol():
    with connect() as c:
        params = (41, "héllo", Decimal("1.25"), True, b"\x00\x01\xff", None)
        sql = ("SELECT %s::int + 1, %s::text || '!', %s::numeric * 2, NOT %s::bool, "
               "%s::bytea, %s::int IS NULL")
        text_row = c.execute(sql, params).fetchone()
        with c.cursor(binary=True) as cur:
            binary_row = cur.execute(sql, params).fetchone()
        try:
            c.execute("SELECT 1 / %s::int", (0,))
            err = None
        except psycopg.Error as e:
            err = describe(e)
        after = scalar(c, "SELECT %s::text", ("still usable",))
        norm = lambda r: [str(v) if not isinstance(v, bytes) else v.hex() for v in r]  # noqa: E731
        return {"text_row": norm(text_row), "binary_row": norm(binary_row),
                "error": err, "after_error": after}


def pipelining():
    with connect() as c:
        c.execute(f"DELETE FROM {S}.items WHERE t LIKE 'pipe%%'")
        with c.pipeline():
            for i in range(10):
                c.execute(f"INSERT INTO {S}.items (n, t) VALUES (%s, 'pipe')", (i,))
            cur = c.execute(f"SELECT count(*), sum(n) FROM {S}.items WHERE t = 'pipe'")
        first = list(cur.fetchone())
        # An error inside a pipeline: what comes after it up to the sync is skipped.
        err = None
        try:
            with c.pipeline() as p:
                c.execute(f"INSERT INTO {S}.items (n, t) VALUES (100, 'pipe-err')")
                c.execute("SELECT 1 / 0")
                c.execute(f"INSERT INTO {S}.items (n, t) VALUES (101, 'pipe-err')")
                p.sync()
        except psycopg.Error as e:
            err = describe(e)
        kept = scalar(c, f"SELECT count(*) FROM {S}.items WHERE t = 'pipe-err'")
        return {"rows": first, "error": err, "rows_kept_around_error": kept}


COPY_ROWS = [(i, f"row {i}\twith tab, 'quote', \\ backslash, é, \"dq\"") for i in range(1, 301)]


def copy_in():
    with connect() as c:
        c.execute(f"DELETE FROM {S}.copy_rows")
        with c.cursor() as cur:
            with cur.copy(f"COPY {S}.copy_rows (id, t) FROM STDIN") as cp:
                for r in COPY_ROWS:
                    cp.write_row(r)
            count = cur.rowcount
        n, md5 = c.execute(f"SELECT count(*), md5(string_agg(id || ':' || t, '|' ORDER BY id)) "
                           f"FROM {S}.copy_rows").fetchone()
        return {"rowcount": count, "rows": n, "md5": md5,
                "md5_expected": hashlib.md5("|".join(f"{i}:{t}" for i, t in COPY_ROWS).encode()).hexdigest() == md5}


def copy_out():
    with connect() as c, c.cursor() as cur:
        data = b""
        with cur.copy(f"COPY (SELECT id, t FROM {S}.copy_rows ORDER BY id) TO STDOUT") as cp:
            for chunk in cp:
                data += bytes(chunk)
        csv = b""
        with cur.copy(f"COPY (SELECT id, t FROM {S}.copy_rows ORDER BY id LIMIT 5) TO STDOUT (FORMAT csv, HEADER)") as cp:
            for chunk in cp:
                csv += bytes(chunk)
        return {"bytes": len(data), "md5": hashlib.md5(data).hexdigest(),
                "lines": data.count(b"\n"), "csv_md5": hashlib.md5(csv).hexdigest()}


def cancel():
    with connect() as c:
        t0 = time.monotonic()
        threading.Timer(0.5, c.cancel_safe).start()
        try:
            c.execute("SELECT pg_sleep(20)")
            res = {"cancelled": False}
        except psycopg.Error as e:
            res = describe(e)
        res["within_10s"] = time.monotonic() - t0 < 10
        res["next_query"] = scalar(c, "SELECT 'after cancel'")
        return res


def two_phase():
    with connect() as observer, connect(autocommit=False) as c:
        observer.execute(f"DELETE FROM {S}.twopc")
        c.tpc_begin(GID)
        c.execute(f"INSERT INTO {S}.twopc VALUES (1, 'prepared')")
        c.tpc_prepare()
        seen_before = scalar(observer, f"SELECT count(*) FROM {S}.twopc")
        listed = scalar(observer, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (GID,))
        recovered = len([x for x in observer.tpc_recover() if x.gtrid == GID])
        c.tpc_commit()
        seen_after = scalar(observer, f"SELECT count(*) FROM {S}.twopc")
        # A second one rolled back with ROLLBACK PREPARED from another session.
        observer.execute(f"BEGIN; INSERT INTO {S}.twopc VALUES (2, 'to roll back'); PREPARE TRANSACTION '{GID}_2'")
        observer.execute(f"ROLLBACK PREPARED '{GID}_2'")
        return {"visible_before_commit": seen_before, "in_pg_prepared_xacts": listed,
                "tpc_recover": recovered, "visible_after_commit": seen_after,
                "after_rollback_prepared": scalar(observer, f"SELECT count(*) FROM {S}.twopc")}


def large_object():
    payload = bytes((i * 7) % 256 for i in range(100_000))
    with connect() as c:
        with c.transaction():
            oid = scalar(c, "SELECT lo_create(0)")
            fd = scalar(c, "SELECT lo_open(%s, %s)", (oid, 0x20000 | 0x40000))
            written = scalar(c, "SELECT lowrite(%s, %s)", (fd, payload))
            scalar(c, "SELECT lo_lseek(%s, 0, 0)", (fd,))
            back = bytes(scalar(c, "SELECT loread(%s, %s)", (fd, 200_000)))
            scalar(c, "SELECT lo_close(%s)", (fd,))
        whole = bytes(scalar(c, "SELECT lo_get(%s)", (oid,)))
        unlinked = scalar(c, "SELECT lo_unlink(%s)", (oid,))
        left = scalar(c, "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = %s", (oid,))
        return {"written": written, "read_back_equal": back == payload,
                "lo_get_equal": whole == payload, "unlink": unlinked, "left_after_unlink": left}


def cursors():
    with connect(autocommit=False) as c:
        with c.cursor(name="chk_named") as cur:  # DECLARE chk_named CURSOR ...; FETCH
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 25) g ORDER BY g")
            batches = []
            while rows := cur.fetchmany(10):
                batches.append(len(rows))
        c.execute("DECLARE chk_plain CURSOR FOR SELECT g FROM generate_series(1, 25) g ORDER BY g")
        fetched = []
        while rows := c.execute("FETCH 7 FROM chk_plain").fetchall():
            fetched.append([r[0] for r in rows])
        c.execute("CLOSE chk_plain")
        c.commit()
        return {"named_cursor_batches": batches, "declare_fetch": fetched}


def rls_set_role():
    with connect() as c:
        out = {"login": who(c)}
        c.execute(f"SET ROLE {ROLE_A}")
        out["set_role_a"] = who(c)
        c.execute(f"SET ROLE {ROLE_B}")
        out["set_role_b"] = who(c)
        c.execute("RESET ROLE")
        out["reset_role"] = who(c)
        return out


def rls_session_authorization():
    with connect(SUPER_USER, SUPER_PASSWORD) as c:
        out = {"login": who(c)}
        c.execute(f"SET SESSION AUTHORIZATION {ROLE_A}")
        out["session_authorization_a"] = who(c)
        c.execute("RESET SESSION AUTHORIZATION")
        out["reset"] = who(c)
        return out


def encoded_text(encoding, new_text, row_id):
    with connect(client_encoding=encoding) as c, connect() as utf8:
        seed = scalar(c, f"SELECT body FROM {S}.texts WHERE id = %s", (row_id,))
        utf8.execute(f"DELETE FROM {S}.texts WHERE id = %s", (row_id + 10,))
        c.execute(f"INSERT INTO {S}.texts VALUES (%s, %s)", (row_id + 10, new_text))
        back = scalar(c, f"SELECT body FROM {S}.texts WHERE id = %s", (row_id + 10,))
        stored = scalar(utf8, f"SELECT body FROM {S}.texts WHERE id = %s", (row_id + 10,))
        return {"client_encoding": scalar(c, "SHOW client_encoding"), "seed": seed,
                "read_back": back, "read_back_equal": back == new_text,
                "stored_as_utf8_equal": stored == new_text}


def encoded_query(encoding, text):
    # psycopg encodes the query text itself in the client encoding: the bytes of this
    # statement on the wire are not UTF-8.
    with connect(client_encoding=encoding) as c:
        v, n = c.execute(f"SELECT '{text}'::text, length('{text}')").fetchone()
        return {"value": v, "length": n, "equal": v == text}


def statement_timeout():
    with connect() as c:
        c.execute("SET statement_timeout = '300ms'")
        try:
            c.execute("SELECT pg_sleep(5)")
            res = {"timed_out": False}
        except psycopg.Error as e:
            res = describe(e)
        c.execute("RESET statement_timeout")
        res["next_query"] = scalar(c, "SELECT 'after timeout'")
        return res


def idle_in_transaction_timeout():
    c = connect(autocommit=False)
    try:
        c.execute("SET idle_in_transaction_session_timeout = '300ms'")
        c.commit()
        c.execute("SELECT 1")  # opens a transaction and leaves it idle
        time.sleep(2.0)
        try:
            c.execute("SELECT 2")
            res = {"ended": False}
        except psycopg.Error as e:
            res = describe(e)
        res["connection_closed"] = c.closed or c.broken
        return res
    finally:
        c.close()


def second_database():
    with connect(dbname=DB2) as c:
        db, v = c.execute("SELECT current_database()::text, (SELECT v FROM marker WHERE id = 1)").fetchone()
        return {"database": db, "marker": v}


def concurrent_connections(n=50):
    barrier = threading.Barrier(n, timeout=60)

    def one(i):
        try:
            with connect() as c:
                v = scalar(c, "SELECT %s::int", (i,))
                pid = c.info.backend_pid
                barrier.wait()  # all n are open at once
                return ("ok", pid, v == i)
        except Exception as e:  # noqa: BLE001
            barrier.abort()
            return ("error", None, describe(e))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    ok = [r for r in results if r[0] == "ok"]
    errors_seen = sorted({str(r[2]) for r in results if r[0] != "ok"})
    return {"connected": len(ok), "answers_right": all(r[2] for r in ok),
            "distinct_pids": len({r[1] for r in ok}), "errors": errors_seen}


def standalone(phase):
    run_check(phase, "scram_login", lambda: login(USER, PASSWORD))
    run_check(phase, "md5_login", lambda: login(MD5_USER, MD5_PASSWORD))
    run_check(phase, "wrong_password", wrong_password)
    run_check(phase, "extended_protocol", extended_protocol)
    run_check(phase, "pipelining", pipelining)
    run_check(phase, "copy_in", copy_in)
    run_check(phase, "copy_out", copy_out)
    run_check(phase, "cancel", cancel)
    run_check(phase, "two_phase_commit", two_phase)
    run_check(phase, "large_object", large_object)
    run_check(phase, "server_side_cursor", cursors)
    run_check(phase, "rls_set_role", rls_set_role)
    run_check(phase, "rls_session_authorization", rls_session_authorization)
    run_check(phase, "latin1_text", lambda: encoded_text("LATIN1", LATIN1_NEW, 1))
    run_check(phase, "latin1_query_text", lambda: encoded_query("LATIN1", LATIN1_QUERY))
    run_check(phase, "koi8r_text", lambda: encoded_text("KOI8R", KOI8R_NEW, 2))
    run_check(phase, "koi8r_query_text", lambda: encoded_query("KOI8R", KOI8R_QUERY))
    run_check(phase, "statement_timeout", statement_timeout)
    run_check(phase, "idle_in_transaction_timeout", idle_in_transaction_timeout)
    run_check(phase, "second_database", second_database)
    run_check(phase, "concurrent_50", concurrent_connections)


def main():
    sessions = Sessions()
    sessions.check("p0")
    wait_go("p1")
    sessions.check("p1")
    standalone("p1")
    with connect() as c:
        info("p1", "new_connection_server_major", scalar(c, "SELECT current_setting('server_version_num')::int / 10000"))
    wait_go("p2")
    sessions.check("p2")


if __name__ == "__main__":
    main()
