// pgjdbc side of pgshift's driver compatibility test (integration/tests/drivers.rs).
//
// The same checks, names and phases as integration/drivers/python/psycopg_checks.py: p0 opens
// the long-lived sessions, gives them state and checks it; after a line on standard input p1
// checks that state again and runs every stand-alone check on new connections; after another
// line p2 checks the sessions once more.
//
// The driver is Debian's libpostgresql-jdbc-java (pgjdbc 42.5.5, /usr/share/java/postgresql.jar):
// Maven Central cannot be reached from these machines, so the test compiles this one file with
// javac against that jar (no Maven, no other dependency; JSON is written by hand below).

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.StringReader;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import javax.sql.XAConnection;
import javax.transaction.xa.XAResource;
import javax.transaction.xa.Xid;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;
import org.postgresql.core.BaseConnection;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;
import org.postgresql.xa.PGXADataSource;

public class DriverChecks {
    static final String HOST = env("CHK_HOST");
    static final int PORT = Integer.parseInt(env("CHK_PORT"));
    static final String DB = env("CHK_DB");
    static final String DB2 = env("CHK_DB2");
    static final String S = env("CHK_SCHEMA");
    static final String USER = env("CHK_USER");
    static final String PASSWORD = env("CHK_PASSWORD");
    static final String MD5_USER = env("CHK_MD5_USER");
    static final String MD5_PASSWORD = env("CHK_MD5_PASSWORD");
    static final String SUPER_USER = env("CHK_SUPER_USER");
    static final String SUPER_PASSWORD = env("CHK_SUPER_PASSWORD");
    static final String ROLE_A = env("CHK_ROLE_A");
    static final String ROLE_B = env("CHK_ROLE_B");
    static final String CHANNEL = S + "_chan";
    static final String GID = S + "_gid";
    static final int NOTIFY_WAIT_MS = 3000;
    static final String PREPARED_SQL = "SELECT /* chk_prepared */ ?::int * 2, current_setting('work_mem')";
    /** How many named server-side statements of the session hold PREPARED_SQL. */
    static final String PREPARED_COUNT_SQL = "SELECT count(*)::int FROM pg_prepared_statements WHERE statement "
            + "LIKE '%chk\\_prepared%' AND statement NOT LIKE '%pg\\_prepared\\_statements%'";

    static final String NO_ENCODING = "pgjdbc writes every statement text and parameter as UTF-8 whatever the "
            + "client_encoding (allowEncodingChanges only changes how it decodes results, and not for KOI8R), "
            + "so a LATIN1 or KOI8-R session gives wrong text even against PostgreSQL itself";

    static final PrintStream OUT = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    static final BufferedReader IN = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));

    static String env(String k) {
        String v = System.getenv(k);
        if (v == null) throw new IllegalStateException(k + " is not set");
        return v;
    }

    // ------------------------------------------------------------------ output

    static class Skip extends Exception {
        Skip(String why) { super(why); }
    }

    interface Check { Object run() throws Exception; }

    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    static void emit(Map<String, Object> m) {
        StringBuilder b = new StringBuilder();
        json(b, m);
        OUT.println(b);
        OUT.flush();
    }

    static void json(StringBuilder b, Object v) {
        if (v == null) {
            b.append("null");
        } else if (v instanceof Map) {
            b.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) b.append(',');
                first = false;
                json(b, String.valueOf(e.getKey()));
                b.append(':');
                json(b, e.getValue());
            }
            b.append('}');
        } else if (v instanceof List) {
            b.append('[');
            boolean first = true;
            for (Object o : (List<?>) v) {
                if (!first) b.append(',');
                first = false;
                json(b, o);
            }
            b.append(']');
        } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long) {
            b.append(v);
        } else {
            String s = String.valueOf(v);
            b.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"': b.append("\\\""); break;
                    case '\\': b.append("\\\\"); break;
                    case '\n': b.append("\\n"); break;
                    case '\r': b.append("\\r"); break;
                    case '\t': b.append("\\t"); break;
                    default:
                        if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                        else b.append(c);
                }
            }
            b.append('"');
        }
    }

    static void run(String phase, String name, Check check) {
        Object result;
        try {
            result = check.run();
        } catch (Skip s) {
            emit(obj("phase", phase, "check", name, "skipped", s.getMessage()));
            return;
        } catch (Throwable e) {
            System.err.println("[" + phase + " " + name + "] unexpected error:");
            e.printStackTrace();
            result = obj("unexpected_error", describe(e));
        }
        emit(obj("phase", phase, "check", name, "result", result));
    }

    /** Class, SQLSTATE and the server's primary message (without "FATAL: " and details). */
    static Map<String, Object> describe(Throwable e) {
        Map<String, Object> m = obj("type", e.getClass().getSimpleName());
        if (e instanceof SQLException && ((SQLException) e).getSQLState() != null) {
            m.put("sqlstate", ((SQLException) e).getSQLState());
        }
        String msg = String.valueOf(e.getMessage());
        if (e instanceof PSQLException) {
            ServerErrorMessage sem = ((PSQLException) e).getServerErrorMessage();
            if (sem != null && sem.getMessage() != null) msg = sem.getMessage();
        }
        m.put("message", msg.split("\n")[0]);
        return m;
    }

    static void waitGo(String next) throws Exception {
        emit(obj("phase", "ready", "next", next));
        if (IN.readLine() == null) throw new IllegalStateException("standard input closed before " + next);
    }

    // ------------------------------------------------------------------ connections

    static Connection connect(String user, String password, String db, Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("connectTimeout", "10");
        // Server-side named statements from the first execution on (default: the fifth).
        p.setProperty("prepareThreshold", "1");
        if (extra != null) p.putAll(extra);
        return DriverManager.getConnection("jdbc:postgresql://" + HOST + ":" + PORT + "/" + db, p);
    }

    static Connection connect() throws SQLException {
        return connect(USER, PASSWORD, DB, null);
    }


    static int pid(Connection c) throws SQLException {
        return c.unwrap(PGConnection.class).getBackendPID();
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        }
    }

    static Object scalar(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getObject(1);
            }
        }
    }

    static List<Object> ids(Connection c) throws SQLException {
        List<Object> out = new ArrayList<>();
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT id FROM public.rls_docs ORDER BY id")) {
            while (rs.next()) out.add(rs.getInt(1));
        }
        return out;
    }

    static Map<String, Object> who(Connection c) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT current_user::text, session_user::text")) {
            rs.next();
            return obj("current_user", rs.getString(1), "session_user", rs.getString(2), "visible_ids", ids(c));
        }
    }

    static String md5(byte[] b) throws Exception {
        StringBuilder s = new StringBuilder();
        for (byte x : MessageDigest.getInstance("MD5").digest(b)) s.append(String.format("%02x", x));
        return s.toString();
    }

    // ------------------------------------------------------------------ long-lived sessions

    static class Sessions {
        Connection app, auth;
        PreparedStatement prepared;

        void setup() throws SQLException {
            app = connect();
            exec(app, "SET work_mem = '3MB'");
            exec(app, "SET application_name = 'driver-checks'");
            exec(app, "SET chk.tag = 'kept'");
            exec(app, "SET ROLE " + ROLE_A);
            exec(app, "LISTEN " + CHANNEL);
            prepared = app.prepareStatement(PREPARED_SQL);
            auth = connect(SUPER_USER, SUPER_PASSWORD, DB, null);
            exec(auth, "SET SESSION AUTHORIZATION " + ROLE_B);
        }

        void check(String phase) throws SQLException {
            run(phase, "session_notify_from_other", this::notifyFromOther);
            run(phase, "session_prepared_statement", this::prepared);
            run(phase, "session_settings", this::settings);
            run(phase, "session_set_role", () -> who(app));
            run(phase, "session_authorization", () -> who(auth));
            run(phase, "session_latin1", DriverChecks::noEncoding);
            run(phase, "session_koi8r", DriverChecks::noEncoding);
            run(phase, "session_notify_self", this::notifySelf);
            emit(obj("phase", phase, "info", "server_major",
                    "value", scalar(app, "SELECT current_setting('server_version_num')::int / 10000")));
        }

        int stale() throws SQLException {
            PGNotification[] n = app.unwrap(PGConnection.class).getNotifications(1);
            return n == null ? 0 : n.length;
        }

        PGNotification next() throws SQLException {
            // getNotifications(timeout) reads the socket without sending a query.
            long deadline = System.currentTimeMillis() + NOTIFY_WAIT_MS;
            while (System.currentTimeMillis() < deadline) {
                PGNotification[] n = app.unwrap(PGConnection.class).getNotifications(200);
                if (n != null && n.length > 0) return n[0];
            }
            return null;
        }

        Object notifyFromOther() throws SQLException {
            // Sent from a new session while this one idles: after a switch the idle listener
            // must still be listening (and told the sender's pid as its driver knows it).
            int stale = stale();
            int sender;
            try (Connection other = connect()) {
                exec(other, "NOTIFY " + CHANNEL + ", 'from another session'");
                sender = pid(other);
            }
            PGNotification n = next();
            if (n == null) return obj("received", false, "stale", stale);
            return obj("received", true, "stale", stale, "channel_matches", CHANNEL.equals(n.getName()), "payload", n.getParameter(),
                    "sender_pid_matches", n.getPID() == sender, "own_pid_matches", n.getPID() == pid(app));
        }

        Object notifySelf() throws SQLException {
            int stale = stale();
            exec(app, "NOTIFY " + CHANNEL + ", 'from myself'");
            PGNotification n = next();
            if (n == null) return obj("received", false, "stale", stale);
            return obj("received", true, "stale", stale, "payload", n.getParameter(), "own_pid_matches", n.getPID() == pid(app));
        }

        Object prepared() throws SQLException {
            // The same PreparedStatement object in every phase: a named server-side statement
            // (prepareThreshold=1) parsed once, bound and executed afterwards.
            prepared.setInt(1, 21);
            try (ResultSet rs = prepared.executeQuery()) {
                rs.next();
                List<Object> row = Arrays.asList(rs.getInt(1), rs.getString(2));
                rs.close();
                return obj("row", row, "named_on_server", scalar(app, PREPARED_COUNT_SQL));
            }
        }

        Object settings() throws SQLException {
            return obj("work_mem", scalar(app, "SHOW work_mem"),
                    "application_name", scalar(app, "SHOW application_name"),
                    "chk.tag", scalar(app, "SELECT current_setting('chk.tag')"));
        }
    }

    // ------------------------------------------------------------------ stand-alone checks

    static Object login(String user, String password) throws SQLException {
        try (Connection c = connect(user, password, DB, null);
             Statement st = c.createStatement();
             ResultSet rs = st.executeQuery("SELECT current_user::text, session_user::text, current_database()::text")) {
            rs.next();
            return obj("current_user", rs.getString(1), "session_user", rs.getString(2), "database", rs.getString(3),
                    "backend_pid_known", pid(c) != 0);
        }
    }

    static Object wrongPassword() {
        try (Connection c = connect(USER, "not-the-password", DB, null)) {
            return obj("connected", true);
        } catch (SQLException e) {
            return describe(e);
        }
    }

    static Object extendedProtocol() throws SQLException {
        try (Connection c = connect()) {
            List<Object> row = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT ?::int + 1, ?::text || '!', ?::numeric * 2, NOT ?::bool, ?::bytea, ?::int IS NULL")) {
                ps.setInt(1, 41);
                ps.setString(2, "héllo");
                ps.setBigDecimal(3, new java.math.BigDecimal("1.25"));
                ps.setBoolean(4, true);
                ps.setBytes(5, new byte[] {0, 1, (byte) 0xff});
                ps.setNull(6, java.sql.Types.INTEGER);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    row.add(String.valueOf(rs.getInt(1)));
                    row.add(rs.getString(2));
                    row.add(rs.getBigDecimal(3).toPlainString());
                    row.add(String.valueOf(rs.getBoolean(4)));
                    StringBuilder hex = new StringBuilder();
                    for (byte x : rs.getBytes(5)) hex.append(String.format("%02x", x));
                    row.add(hex.toString());
                    row.add(String.valueOf(rs.getBoolean(6)));
                }
            }
            Object err = null;
            try {
                scalar(c, "SELECT 1 / ?::int", 0);
            } catch (SQLException e) {
                err = describe(e);
            }
            return obj("text_row", row, "error", err, "after_error", scalar(c, "SELECT ?::text", "still usable"));
        }
    }

    static Object pipelining() throws SQLException {
        // A batch: pgjdbc writes every Bind/Execute before it reads the answers.
        try (Connection c = connect()) {
            exec(c, "DELETE FROM " + S + ".items WHERE t LIKE 'pipe%'");
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + S + ".items (n, t) VALUES (?, 'pipe')")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, i);
                    ps.addBatch();
                }
                ps.executeBatch();
            }
            List<Object> rows = new ArrayList<>();
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*), sum(n) FROM " + S + ".items WHERE t = 'pipe'")) {
                rs.next();
                rows.add(rs.getLong(1));
                rows.add(rs.getLong(2));
            }
            Object err = null;
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + S + ".items (n, t) VALUES (100 / ?, 'pipe-err')")) {
                for (int d : new int[] {1, 0, 2}) {
                    ps.setInt(1, d);
                    ps.addBatch();
                }
                ps.executeBatch();
            } catch (BatchUpdateException e) {
                SQLException cause = e.getNextException() != null ? e.getNextException() : e;
                err = describe(cause);
            }
            return obj("rows", rows, "error", err,
                    "rows_kept_around_error", scalar(c, "SELECT count(*)::int FROM " + S + ".items WHERE t = 'pipe-err'"));
        }
    }

    static final List<Object[]> COPY_ROWS = new ArrayList<>();
    static {
        for (int i = 1; i <= 300; i++) COPY_ROWS.add(new Object[] {i, "row " + i + "\twith tab, 'quote', \\ backslash, é, \"dq\""});
    }

    static String copyEscape(String s) {
        return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r");
    }

    static Object copyIn() throws Exception {
        try (Connection c = connect()) {
            exec(c, "DELETE FROM " + S + ".copy_rows");
            StringBuilder data = new StringBuilder();
            StringBuilder expect = new StringBuilder();
            for (Object[] r : COPY_ROWS) {
                data.append(r[0]).append('\t').append(copyEscape((String) r[1])).append('\n');
                if (expect.length() > 0) expect.append('|');
                expect.append(r[0]).append(':').append(r[1]);
            }
            CopyManager cm = new CopyManager(c.unwrap(BaseConnection.class));
            long n = cm.copyIn("COPY " + S + ".copy_rows (id, t) FROM STDIN", new StringReader(data.toString()));
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*)::int, md5(string_agg(id || ':' || t, '|' ORDER BY id)) FROM " + S + ".copy_rows")) {
                rs.next();
                String md5 = rs.getString(2);
                return obj("rowcount", n, "rows", rs.getInt(1), "md5", md5,
                        "md5_expected", md5(expect.toString().getBytes(StandardCharsets.UTF_8)).equals(md5));
            }
        }
    }

    static Object copyOut() throws Exception {
        try (Connection c = connect()) {
            CopyManager cm = new CopyManager(c.unwrap(BaseConnection.class));
            ByteArrayOutputStream data = new ByteArrayOutputStream();
            long n = cm.copyOut("COPY (SELECT id, t FROM " + S + ".copy_rows ORDER BY id) TO STDOUT", data);
            ByteArrayOutputStream csv = new ByteArrayOutputStream();
            cm.copyOut("COPY (SELECT id, t FROM " + S + ".copy_rows ORDER BY id LIMIT 5) TO STDOUT (FORMAT csv, HEADER)", csv);
            byte[] b = data.toByteArray();
            int lines = 0;
            for (byte x : b) if (x == '\n') lines++;
            return obj("rowcount", n, "bytes", b.length, "md5", md5(b), "lines", lines, "csv_md5", md5(csv.toByteArray()));
        }
    }

    static Object cancel() throws Exception {
        try (Connection c = connect(); Statement st = c.createStatement()) {
            long t0 = System.currentTimeMillis();
            Thread t = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    st.cancel(); // pgjdbc's CancelRequest with this connection's BackendKeyData
                } catch (Exception e) {
                    e.printStackTrace();
                }
            });
            t.start();
            Map<String, Object> res;
            try {
                st.execute("SELECT pg_sleep(20)");
                res = obj("cancelled", false);
            } catch (SQLException e) {
                res = describe(e);
            }
            t.join();
            res.put("within_10s", System.currentTimeMillis() - t0 < 10000);
            res.put("next_query", scalar(c, "SELECT 'after cancel'"));
            return res;
        }
    }

    /** An XA transaction id; pgjdbc turns it into the gid of PREPARE TRANSACTION. */
    static class ChkXid implements Xid {
        final byte[] gtrid;
        ChkXid(String g) { gtrid = g.getBytes(StandardCharsets.UTF_8); }
        public int getFormatId() { return 4711; }
        public byte[] getGlobalTransactionId() { return gtrid; }
        public byte[] getBranchQualifier() { return new byte[] {1}; }
    }

    static Object twoPhase() throws Exception {
        // pgjdbc's XA: start, end, prepare (PREPARE TRANSACTION), recover, commit (COMMIT PREPARED).
        PGXADataSource ds = new PGXADataSource();
        ds.setServerNames(new String[] {HOST});
        ds.setPortNumbers(new int[] {PORT});
        ds.setDatabaseName(DB);
        ds.setUser(USER);
        ds.setPassword(PASSWORD);
        XAConnection xc = ds.getXAConnection();
        try (Connection observer = connect()) {
            exec(observer, "DELETE FROM " + S + ".twopc");
            XAResource xr = xc.getXAResource();
            Xid xid = new ChkXid(GID);
            xr.start(xid, XAResource.TMNOFLAGS);
            try (Connection c = xc.getConnection()) {
                exec(c, "INSERT INTO " + S + ".twopc VALUES (1, 'prepared')");
            }
            xr.end(xid, XAResource.TMSUCCESS);
            int vote = xr.prepare(xid);
            Object before = scalar(observer, "SELECT count(*)::int FROM " + S + ".twopc");
            // pgjdbc's gid of an Xid: formatId_base64(gtrid)_base64(bqual).
            java.util.Base64.Encoder b64 = java.util.Base64.getEncoder();
            String gid = xid.getFormatId() + "_" + b64.encodeToString(xid.getGlobalTransactionId()) + "_"
                    + b64.encodeToString(xid.getBranchQualifier());
            Object listed = scalar(observer, "SELECT count(*)::int FROM pg_prepared_xacts WHERE gid = ?", gid);
            int recovered = 0;
            for (Xid x : xr.recover(XAResource.TMSTARTRSCAN | XAResource.TMENDRSCAN)) {
                if (Arrays.equals(x.getGlobalTransactionId(), xid.getGlobalTransactionId())) recovered++;
            }
            xr.commit(xid, false);
            Object after = scalar(observer, "SELECT count(*)::int FROM " + S + ".twopc");
            exec(observer, "BEGIN; INSERT INTO " + S + ".twopc VALUES (2, 'to roll back'); PREPARE TRANSACTION '" + GID + "_2'");
            exec(observer, "ROLLBACK PREPARED '" + GID + "_2'");
            return obj("prepare_vote_ok", vote == XAResource.XA_OK, "visible_before_commit", before,
                    "in_pg_prepared_xacts", listed, "recovered", recovered, "visible_after_commit", after,
                    "after_rollback_prepared", scalar(observer, "SELECT count(*)::int FROM " + S + ".twopc"));
        } finally {
            xc.close();
        }
    }

    static Object largeObject() throws Exception {
        // pgjdbc's LargeObjectManager: the fast-path interface (FunctionCall messages).
        byte[] payload = new byte[100_000];
        for (int i = 0; i < payload.length; i++) payload[i] = (byte) ((i * 7) % 256);
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            LargeObjectManager lom = c.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO(LargeObjectManager.READWRITE);
            LargeObject lo = lom.open(oid, LargeObjectManager.READWRITE);
            lo.write(payload);
            lo.seek(0);
            byte[] back = lo.read(200_000);
            int size = lo.size();
            lo.close();
            c.commit();
            byte[] whole = (byte[]) scalar(c, "SELECT lo_get(?::oid)", oid);
            lom.delete(oid);
            c.commit();
            Object left = scalar(c, "SELECT count(*)::int FROM pg_largeobject_metadata WHERE oid = ?::oid", oid);
            c.commit();
            return obj("written", size, "read_back_equal", Arrays.equals(back, payload),
                    "lo_get_equal", Arrays.equals(whole, payload), "deleted", true, "left_after_unlink", left);
        }
    }

    static Object cursors() throws SQLException {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            // setFetchSize outside autocommit: a portal read with Execute row limits.
            int rows = 0;
            try (Statement st = c.createStatement()) {
                st.setFetchSize(10);
                try (ResultSet rs = st.executeQuery("SELECT g, md5(g::text) FROM generate_series(1, 25) g ORDER BY g")) {
                    while (rs.next()) rows++;
                }
            }
            exec(c, "DECLARE chk_plain CURSOR FOR SELECT g FROM generate_series(1, 25) g ORDER BY g");
            List<Object> fetched = new ArrayList<>();
            for (;;) {
                List<Object> batch = new ArrayList<>();
                try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("FETCH 7 FROM chk_plain")) {
                    while (rs.next()) batch.add(rs.getInt(1));
                }
                if (batch.isEmpty()) break;
                fetched.add(batch);
            }
            exec(c, "CLOSE chk_plain");
            c.commit();
            return obj("fetch_size_rows", rows, "declare_fetch", fetched);
        }
    }

    static Object rlsSetRole() throws SQLException {
        try (Connection c = connect()) {
            Map<String, Object> out = obj("login", who(c));
            exec(c, "SET ROLE " + ROLE_A);
            out.put("set_role_a", who(c));
            exec(c, "SET ROLE " + ROLE_B);
            out.put("set_role_b", who(c));
            exec(c, "RESET ROLE");
            out.put("reset_role", who(c));
            return out;
        }
    }

    static Object rlsSessionAuthorization() throws SQLException {
        try (Connection c = connect(SUPER_USER, SUPER_PASSWORD, DB, null)) {
            Map<String, Object> out = obj("login", who(c));
            exec(c, "SET SESSION AUTHORIZATION " + ROLE_A);
            out.put("session_authorization_a", who(c));
            exec(c, "RESET SESSION AUTHORIZATION");
            out.put("reset", who(c));
            return out;
        }
    }

    static Object noEncoding() throws Skip {
        throw new Skip(NO_ENCODING);
    }

    static Object statementTimeout() throws SQLException {
        try (Connection c = connect()) {
            exec(c, "SET statement_timeout = '300ms'");
            Map<String, Object> res;
            try {
                exec(c, "SELECT pg_sleep(5)");
                res = obj("timed_out", false);
            } catch (SQLException e) {
                res = describe(e);
            }
            exec(c, "RESET statement_timeout");
            res.put("next_query", scalar(c, "SELECT 'after timeout'"));
            return res;
        }
    }

    static Object idleInTransactionTimeout() throws Exception {
        Connection c = connect();
        try {
            exec(c, "SET idle_in_transaction_session_timeout = '300ms'");
            c.setAutoCommit(false);
            scalar(c, "SELECT 1");
            Thread.sleep(2000);
            Map<String, Object> res;
            try {
                scalar(c, "SELECT 2");
                res = obj("ended", false);
            } catch (SQLException e) {
                res = describe(e);
            }
            res.put("connection_closed", c.isClosed() || !c.isValid(2));
            return res;
        } finally {
            try {
                c.close();
            } catch (SQLException ignored) {
                // already gone
            }
        }
    }

    static Object secondDatabase() throws SQLException {
        try (Connection c = connect(USER, PASSWORD, DB2, null);
             Statement st = c.createStatement();
             ResultSet rs = st.executeQuery("SELECT current_database()::text, (SELECT v FROM marker WHERE id = 1)")) {
            rs.next();
            return obj("database", rs.getString(1), "marker", rs.getString(2));
        }
    }

    static Object concurrent() throws Exception {
        int n = 50;
        ExecutorService pool = Executors.newFixedThreadPool(n);
        CountDownLatch opened = new CountDownLatch(n);
        List<Future<Object[]>> futures = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            final int k = i;
            futures.add(pool.submit(() -> {
                try (Connection c = connect()) {
                    Object v = scalar(c, "SELECT ?::int", k);
                    int p = pid(c);
                    opened.countDown();
                    opened.await(60, TimeUnit.SECONDS); // all n open at once
                    return new Object[] {"ok", p, Integer.valueOf(k).equals(v)};
                } catch (Exception e) {
                    opened.countDown();
                    return new Object[] {"error", null, describe(e).toString()};
                }
            }));
        }
        int ok = 0;
        boolean right = true;
        TreeSet<Integer> pids = new TreeSet<>();
        TreeSet<String> errors = new TreeSet<>();
        for (Future<Object[]> f : futures) {
            Object[] r = f.get();
            if ("ok".equals(r[0])) {
                ok++;
                pids.add((Integer) r[1]);
                right &= (Boolean) r[2];
            } else {
                errors.add((String) r[2]);
            }
        }
        pool.shutdown();
        return obj("connected", ok, "answers_right", right, "distinct_pids", pids.size(), "errors", new ArrayList<>(errors));
    }

    static void standalone(String phase) {
        run(phase, "scram_login", () -> login(USER, PASSWORD));
        run(phase, "md5_login", () -> login(MD5_USER, MD5_PASSWORD));
        run(phase, "wrong_password", DriverChecks::wrongPassword);
        run(phase, "extended_protocol", DriverChecks::extendedProtocol);
        run(phase, "pipelining", DriverChecks::pipelining);
        run(phase, "copy_in", DriverChecks::copyIn);
        run(phase, "copy_out", DriverChecks::copyOut);
        run(phase, "cancel", DriverChecks::cancel);
        run(phase, "two_phase_commit", DriverChecks::twoPhase);
        run(phase, "large_object", DriverChecks::largeObject);
        run(phase, "server_side_cursor", DriverChecks::cursors);
        run(phase, "rls_set_role", DriverChecks::rlsSetRole);
        run(phase, "rls_session_authorization", DriverChecks::rlsSessionAuthorization);
        run(phase, "latin1_text", DriverChecks::noEncoding);
        run(phase, "latin1_query_text", DriverChecks::noEncoding);
        run(phase, "koi8r_text", DriverChecks::noEncoding);
        run(phase, "koi8r_query_text", DriverChecks::noEncoding);
        run(phase, "statement_timeout", DriverChecks::statementTimeout);
        run(phase, "idle_in_transaction_timeout", DriverChecks::idleInTransactionTimeout);
        run(phase, "second_database", DriverChecks::secondDatabase);
        run(phase, "concurrent_50", DriverChecks::concurrent);
    }

    public static void main(String[] args) throws Exception {
        Sessions s = new Sessions();
        s.setup();
        s.check("p0");
        waitGo("p1");
        s.check("p1");
        standalone("p1");
        try (Connection c = connect()) {
            emit(obj("phase", "p1", "info", "new_connection_server_major",
                    "value", scalar(c, "SELECT current_setting('server_version_num')::int / 10000")));
        }
        waitGo("p2");
        s.check("p2");
        System.exit(0);
    }
}
