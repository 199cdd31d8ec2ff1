"""asyncpg side of pgshift's driver compatibility test (integration/tests/drivers.rs).

The same checks, names and phases as psycopg_checks.py (see there). asyncpg prepares every
statement it runs as a named server-side statement and caches it, so after a switch of
backends each cached statement must still be known to the new server."""

import asyncio
import hashlib
import time

import asyncpg

from common import (
    CHANNEL, DB, DB2, GID, HOST, KOI8R_NEW, KOI8R_SEED, LATIN1_NEW, LATIN1_SEED, MD5_PASSWORD,
    MD5_USER, NOTIFY_WAIT, PASSWORD, PORT, ROLE_A, ROLE_B, SCHEMA, SUPER_PASSWORD, SUPER_USER,
    USER, Skip, describe, info, run_check_async, wait_go_async,
)

S = SCHEMA
PREPARED_SQL = "SELECT /* chk_prepared */ $1::int * 2, current_setting('work_mem')"
# How many named server-side statements of the session hold PREPARED_SQL.
PREPARED_COUNT_SQL = ("SELECT count(*)::int FROM pg_prepared_statements WHERE statement LIKE '%chk\\_prepared%' "
                      "AND statement NOT LIKE '%pg\\_prepared\\_statements%'")

NO_QUERY_ENCODING = ("asyncpg encodes every query text as UTF-8 whatever the client_encoding "
                     "(only data values use it), so a query text in this encoding cannot be sent")


async def connect(user=USER, password=PASSWORD, database=DB, **kw):
    return await asyncpg.connect(host=HOST, port=PORT, user=user, password=password,
                                 database=database, timeout=10, **kw)


async def visible_ids(conn):
    return [r[0] for r in await conn.fetch("SELECT id FROM public.rls_docs ORDER BY id")]


async def who(conn):
    cu, su = await conn.fetchrow("SELECT current_user::text, session_user::text")
    return {"current_user": cu, "session_user": su, "visible_ids": await visible_ids(conn)}


# ---------------------------------------------------------------- long-lived sessions

class Sessions:
    async def setup(self):
        self.queue = asyncio.Queue()
        self.app = await connect()
        await self.app.execute("SET work_mem = '3MB'")
        await self.app.execute("SET application_name = 'driver-checks'")
        await self.app.execute("SET chk.tag = 'kept'")
        await self.app.execute(f"SET ROLE {ROLE_A}")
        # (Prepared before LISTEN: a prepare() as the last request leaves asyncpg 0.32 deaf to
        # notifications until its next query, direct as through pgshift.)
        self.stmt = await self.app.prepare(PREPARED_SQL)
        await self.app.add_listener(CHANNEL, lambda _c, pid, ch, payload: self.queue.put_nowait((pid, ch, payload)))
        self.auth = await connect(SUPER_USER, SUPER_PASSWORD)
        await self.auth.execute(f"SET SESSION AUTHORIZATION {ROLE_B}")
        self.latin1 = await connect(server_settings={"client_encoding": "LATIN1"})
        self.koi8r = await connect(server_settings={"client_encoding": "KOI8R"})

    async def check(self, phase):
        await run_check_async(phase, "session_notify_from_other", self.notify_from_other)
        await run_check_async(phase, "session_prepared_statement", self.prepared)
        await run_check_async(phase, "session_settings", self.settings)
        await run_check_async(phase, "session_set_role", lambda: who(self.app))
        await run_check_async(phase, "session_authorization", lambda: who(self.auth))
        await run_check_async(phase, "session_latin1", lambda: self.encoded(self.latin1, 1, LATIN1_SEED))
        await run_check_async(phase, "session_koi8r", lambda: self.encoded(self.koi8r, 2, KOI8R_SEED))
        await run_check_async(phase, "session_notify_self", self.notify_self)
        info(phase, "server_major", await self.app.fetchval("SELECT current_setting('server_version_num')::int / 10000"))

    def stale(self):
        """Notifications that arrived before this check asked for one (none are expected)."""
        n = 0
        while not self.queue.empty():
            self.queue.get_nowait()
            n += 1
        return n

    async def next_notification(self):
        try:
            return await asyncio.wait_for(self.queue.get(), NOTIFY_WAIT)
        except asyncio.TimeoutError:
            return None

    async def notify_from_other(self):
        stale = self.stale()
        other = await connect()
        try:
            await other.execute(f"NOTIFY {CHANNEL}, 'from another session'")
            sender = other.get_server_pid()
        finally:
            await other.close()
        n = await self.next_notification()
        if n is None:
            return {"received": False, "stale": stale}
        pid, channel, payload = n
        return {"received": True, "stale": stale, "channel_matches": channel == CHANNEL, "payload": payload,
                "sender_pid_matches": pid == sender,
                "own_pid_matches": pid == self.app.get_server_pid()}

    async def notify_self(self):
        stale = self.stale()
        await self.app.execute(f"NOTIFY {CHANNEL}, 'from myself'")
        n = await self.next_notification()
        if n is None:
            return {"received": False, "stale": stale}
        pid, _, payload = n
        return {"received": True, "stale": stale, "payload": payload, "own_pid_matches": pid == self.app.get_server_pid()}

    async def prepared(self):
        # A PreparedStatement made in p0: bound and executed again without a new Parse.
        row = list(await self.stmt.fetchrow(21))
        return {"row": row, "named_on_server": await self.app.fetchval(PREPARED_COUNT_SQL)}

    async def settings(self):
        c = self.app
        return {"work_mem": await c.fetchval("SHOW work_mem"),
                "application_name": await c.fetchval("SHOW application_name"),
                "chk.tag": await c.fetchval("SELECT current_setting('chk.tag')")}

    @staticmethod
    async def encoded(conn, row_id, expect):
        body = await conn.fetchval(f"SELECT body FROM {S}.texts WHERE id = $1", row_id)
        return {"client_encoding": await conn.fetchval("SHOW client_encoding"),
                "body": body, "body_equal": body == expect}


# ---------------------------------------------------------------- stand-alone checks

async def login(user, password):
    c = await connect(user, password)
    try:
        r = await c.fetchrow("SELECT current_user::text, session_user::text, current_database()::text")
        return {"current_user": r[0], "session_user": r[1], "database": r[2],
                "backend_pid_known": c.get_server_pid() != 0}
    finally:
        await c.close()


async def wrong_password():
    try:
        await (await connect(password="not-the-password")).close()
        return {"connected": True}
    except asyncpg.PostgresError as e:
        return describe(e)


async def extended_protocol():
    from decimal import Decimal

    c = await connect()
    try:
        params = (41, "héllo", Decimal("1.25"), True, b"\x00\x01\xff", None)
        row = await c.fetchrow("SELECT $1::int + 1, $2::text || '!', $3::numeric * 2, NOT $4::bool, "
                               "$5::bytea, $6::int IS NULL", *params)
        try:
            await c.fetchval("SELECT 1 / $1::int", 0)
            err = None
        except asyncpg.PostgresError as e:
            err = describe(e)
        after = await c.fetchval("SELECT $1::text", "still usable")
        norm = [str(v) if not isinstance(v, bytes) else v.hex() for v in row]
        return {"binary_row": norm, "error": err, "after_error": after}
    finally:
        await c.close()


async def pipelining():
    # executemany sends every Bind/Execute before it reads an answer (one Sync at the end).
    c = await connect()
    try:
        await c.execute(f"DELETE FROM {S}.items WHERE t LIKE 'pipe%'")
        await c.executemany(f"INSERT INTO {S}.items (n, t) VALUES ($1, 'pipe')", [(i,) for i in range(10)])
        rows = list(await c.fetchrow(f"SELECT count(*), sum(n) FROM {S}.items WHERE t = 'pipe'"))
        err = None
        try:
            await c.executemany(f"INSERT INTO {S}.items (n, t) VALUES (100 / $1, 'pipe-err')", [(1,), (0,), (2,)])
        except asyncpg.PostgresError as e:
            err = describe(e)
        kept = await c.fetchval(f"SELECT count(*) FROM {S}.items WHERE t = 'pipe-err'")
        return {"rows": rows, "error": err, "rows_kept_around_error": kept}
    finally:
        await c.close()


COPY_ROWS = [(i, f"row {i}\twith tab, 'quote', \\ backslash, é, \"dq\"") for i in range(1, 301)]


async def copy_in():
    c = await connect()
    try:
        await c.execute(f"DELETE FROM {S}.copy_rows")
        status = await c.copy_records_to_table("copy_rows", records=COPY_ROWS, columns=["id", "t"], schema_name=S)
        n, md5 = await c.fetchrow(f"SELECT count(*), md5(string_agg(id || ':' || t, '|' ORDER BY id)) FROM {S}.copy_rows")
        return {"status": status, "rows": n, "md5": md5,
                "md5_expected": hashlib.md5("|".join(f"{i}:{t}" for i, t in COPY_ROWS).encode()).hexdigest() == md5}
    finally:
        await c.close()


async def copy_out():
    c = await connect()
    try:
        chunks = []

        async def sink(b):
            chunks.append(bytes(b))

        status = await c.copy_from_query(f"SELECT id, t FROM {S}.copy_rows ORDER BY id", output=sink)
        data = b"".join(chunks)
        csv = []

        async def csv_sink(b):
            csv.append(bytes(b))

        await c.copy_from_query(f"SELECT id, t FROM {S}.copy_rows ORDER BY id LIMIT 5", output=csv_sink,
                                format="csv", header=True)
        return {"status": status, "bytes": len(data), "md5": hashlib.md5(data).hexdigest(),
                "lines": data.count(b"\n"), "csv_md5": hashlib.md5(b"".join(csv)).hexdigest()}
    finally:
        await c.close()


async def cancel():
    # asyncpg cancels a query that runs past its timeout with a CancelRequest; it raises
    # TimeoutError and swallows the server's 57014. Whether the cancel reached the right
    # backend shows in how soon the connection answers again.
    c = await connect()
    try:
        t0 = time.monotonic()
        try:
            await c.fetch("SELECT pg_sleep(20)", timeout=0.5)
            res = {"cancelled": False}
        except (asyncio.TimeoutError, asyncpg.PostgresError) as e:
            res = describe(e)
        res["next_query"] = await c.fetchval("SELECT 'after cancel'")
        res["within_10s"] = time.monotonic() - t0 < 10
        return res
    finally:
        await c.close()


async def two_phase():
    c, observer = await connect(), await connect()
    try:
        await observer.execute(f"DELETE FROM {S}.twopc")
        await c.execute(f"BEGIN; INSERT INTO {S}.twopc VALUES (1, 'prepared'); PREPARE TRANSACTION '{GID}'")
        seen_before = await observer.fetchval(f"SELECT count(*) FROM {S}.twopc")
        listed = await observer.fetchval("SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", GID)
        await c.execute(f"COMMIT PREPARED '{GID}'")
        seen_after = await observer.fetchval(f"SELECT count(*) FROM {S}.twopc")
        await observer.execute(f"BEGIN; INSERT INTO {S}.twopc VALUES (2, 'to roll back'); PREPARE TRANSACTION '{GID}_2'")
        await observer.execute(f"ROLLBACK PREPARED '{GID}_2'")
        return {"visible_before_commit": seen_before, "in_pg_prepared_xacts": listed,
                "visible_after_commit": seen_after,
                "after_rollback_prepared": await observer.fetchval(f"SELECT count(*) FROM {S}.twopc")}
    finally:
        await c.close()
        await observer.close()


async def large_object():
    payload = bytes((i * 7) % 256 for i in range(100_000))
    c = await connect()
    try:
        async with c.transaction():
            oid = await c.fetchval("SELECT lo_create(0)")
            fd = await c.fetchval("SELECT lo_open($1, $2)", oid, 0x20000 | 0x40000)
            written = await c.fetchval("SELECT lowrite($1, $2)", fd, payload)
            await c.fetchval("SELECT lo_lseek($1, 0, 0)", fd)
            back = await c.fetchval("SELECT loread($1, $2)", fd, 200_000)
            await c.fetchval("SELECT lo_close($1)", fd)
        whole = await c.fetchval("SELECT lo_get($1)", oid)
        unlinked = await c.fetchval("SELECT lo_unlink($1)", oid)
        left = await c.fetchval("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = $1", oid)
        return {"written": written, "read_back_equal": back == payload,
                "lo_get_equal": whole == payload, "unlink": unlinked, "left_after_unlink": left}
    finally:
        await c.close()


async def cursors():
    c = await connect()
    try:
        async with c.transaction():
            # asyncpg's cursor: a portal read with Execute row limits (PortalSuspended).
            cur = await c.cursor("SELECT g, md5(g::text) FROM generate_series(1, 25) g ORDER BY g")
            batches = []
            while rows := await cur.fetch(10):
                batches.append(len(rows))
            await c.execute("DECLARE chk_plain CURSOR FOR SELECT g FROM generate_series(1, 25) g ORDER BY g")
            fetched = []
            while rows := await c.fetch("FETCH 7 FROM chk_plain"):
                fetched.append([r[0] for r in rows])
            await c.execute("CLOSE chk_plain")
        return {"named_cursor_batches": batches, "declare_fetch": fetched}
    finally:
        await c.close()


async def rls_set_role():
    c = await connect()
    try:
        out = {"login": await who(c)}
        await c.execute(f"SET ROLE {ROLE_A}")
        out["set_role_a"] = await who(c)
        await c.execute(f"SET ROLE {ROLE_B}")
        out["set_role_b"] = await who(c)
        await c.execute("RESET ROLE")
        out["reset_role"] = await who(c)
        return out
    finally:
        await c.close()


async def rls_session_authorization():
    c = await connect(SUPER_USER, SUPER_PASSWORD)
    try:
        out = {"login": await who(c)}
        await c.execute(f"SET SESSION AUTHORIZATION {ROLE_A}")
        out["session_authorization_a"] = await who(c)
        await c.execute("RESET SESSION AUTHORIZATION")
        out["reset"] = await who(c)
        return out
    finally:
        await c.close()


async def encoded_text(encoding, new_text, row_id):
    c = await connect(server_settings={"client_encoding": encoding})
    utf8 = await connect()
    try:
        seed = await c.fetchval(f"SELECT body FROM {S}.texts WHERE id = $1", row_id)
        await utf8.execute(f"DELETE FROM {S}.texts WHERE id = {row_id + 10}")
        await c.execute(f"INSERT INTO {S}.texts VALUES ($1, $2)", row_id + 10, new_text)
        back = await c.fetchval(f"SELECT body FROM {S}.texts WHERE id = $1", row_id + 10)
        stored = await utf8.fetchval(f"SELECT body FROM {S}.texts WHERE id = $1", row_id + 10)
        return {"client_encoding": await c.fetchval("SHOW client_encoding"), "seed": seed,
                "read_back": back, "read_back_equal": back == new_text,
                "stored_as_utf8_equal": stored == new_text}
    finally:
        await c.close()
        await utf8.close()


async def encoded_query(_encoding, _text):
    raise Skip(NO_QUERY_ENCODING)


async def statement_timeout():
    c = await connect()
    try:
        await c.execute("SET statement_timeout = '300ms'")
        try:
            await c.fetchval("SELECT pg_sleep(5)")
            res = {"timed_out": False}
        except asyncpg.PostgresError as e:
            res = describe(e)
        await c.execute("RESET statement_timeout")
        res["next_query"] = await c.fetchval("SELECT 'after timeout'")
        return res
    finally:
        await c.close()


async def idle_in_transaction_timeout():
    # asyncpg drops an ErrorResponse that arrives while it waits for nothing: the 25P03 is
    # not seen, only that the connection ended (its termination listener runs).
    c = await connect()
    ended = []
    c.add_termination_listener(lambda _c: ended.append(True))
    try:
        await c.execute("SET idle_in_transaction_session_timeout = '300ms'")
        tr = c.transaction()
        await tr.start()
        await c.fetchval("SELECT 1")
        await asyncio.sleep(2.0)
        closed_before = c.is_closed()
        try:
            await c.fetchval("SELECT 2")
            res = {"ended": False}
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            res = describe(e)
        res["closed_before_next_query"] = closed_before
        res["termination_listener_called"] = bool(ended)
        return res
    finally:
        if not c.is_closed():
            c.terminate()


async def second_database():
    c = await connect(database=DB2)
    try:
        db, v = await c.fetchrow("SELECT current_database()::text, (SELECT v FROM marker WHERE id = 1)")
        return {"database": db, "marker": v}
    finally:
        await c.close()


async def concurrent_connections(n=50):
    async def one(i):
        try:
            return ("ok", await connect())
        except Exception as e:  # noqa: BLE001
            return ("error", describe(e))

    results = await asyncio.gather(*(one(i) for i in range(n)))
    conns = [r[1] for r in results if r[0] == "ok"]
    try:
        answers = await asyncio.gather(*(c.fetchval("SELECT $1::int", i) for i, c in enumerate(conns)))
        return {"connected": len(conns), "answers_right": answers == list(range(len(conns))),
                "distinct_pids": len({c.get_server_pid() for c in conns}),
                "errors": sorted({str(r[1]) for r in results if r[0] != "ok"})}
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def standalone(phase):
    r = run_check_async
    await r(phase, "scram_login", lambda: login(USER, PASSWORD))
    await r(phase, "md5_login", lambda: login(MD5_USER, MD5_PASSWORD))
    await r(phase, "wrong_password", wrong_password)
    await r(phase, "extended_protocol", extended_protocol)
    await r(phase, "pipelining", pipelining)
    await r(phase, "copy_in", copy_in)
    await r(phase, "copy_out", copy_out)
    await r(phase, "cancel", cancel)
    await r(phase, "two_phase_commit", two_phase)
    await r(phase, "large_object", large_object)
    await r(phase, "server_side_cursor", cursors)
    await r(phase, "rls_set_role", rls_set_role)
    await r(phase, "rls_session_authorization", rls_session_authorization)
    await r(phase, "latin1_text", lambda: encoded_text("LATIN1", LATIN1_NEW, 1))
    await r(phase, "latin1_query_text", lambda: encoded_query("LATIN1", None))
    await r(phase, "koi8r_text", lambda: encoded_text("KOI8R", KOI8R_NEW, 2))
    await r(phase, "koi8r_query_text", lambda: encoded_query("KOI8R", None))
    await r(phase, "statement_timeout", statement_timeout)
    await r(phase, "idle_in_transaction_timeout", idle_in_transaction_timeout)
    await r(phase, "second_database", second_database)
    await r(phase, "concurrent_50", concurrent_connections)


async def main():
    sessions = Sessions()
    await sessions.setup()
    await sessions.check("p0")
    await wait_go_async("p1")
    await sessions.check("p1")
    await standalone("p1")
    c = await connect()
    info("p1", "new_connection_server_major", await c.fetchval("SELECT current_setting('server_version_num')::int / 10000"))
    await c.close()
    await wait_go_async("p2")
    await sessions.check("p2")


if __name__ == "__main__":
    asyncio.run(main())
