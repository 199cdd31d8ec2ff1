// node-postgres side of pgshift's driver compatibility test (integration/tests/drivers.rs).
// The same checks, names and phases as integration/drivers/python/psycopg_checks.py: p0 opens
// the long-lived sessions, gives them state and checks it; after a line on standard input p1
// checks that state again and runs every stand-alone check on new connections; after another
// line p2 checks the sessions once more. The modules come from NODE_PATH (scripts/prereqs
// installs them with npm ci from this folder's package-lock.json into .cache/drivers/node).
'use strict'

const crypto = require('crypto')
const readline = require('readline')
const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const Cursor = require('pg-cursor')

const env = (k) => {
  const v = process.env[k]
  if (v === undefined) throw new Error(`${k} is not set`)
  return v
}
const HOST = env('CHK_HOST')
const PORT = Number(env('CHK_PORT'))
const DB = env('CHK_DB')
const DB2 = env('CHK_DB2')
const S = env('CHK_SCHEMA')
const USER = env('CHK_USER')
const PASSWORD = env('CHK_PASSWORD')
const MD5_USER = env('CHK_MD5_USER')
const MD5_PASSWORD = env('CHK_MD5_PASSWORD')
const SUPER_USER = env('CHK_SUPER_USER')
const SUPER_PASSWORD = env('CHK_SUPER_PASSWORD')
const ROLE_A = env('CHK_ROLE_A')
const ROLE_B = env('CHK_ROLE_B')
const CHANNEL = S + '_chan'
const GID = S + '_gid'
const NOTIFY_WAIT_MS = 3000
const PREPARED_SQL = "SELECT /* chk_prepared */ $1::int * 2 AS doubled, current_setting('work_mem') AS work_mem"
// How many named server-side statements of the session hold PREPARED_SQL.
const PREPARED_COUNT_SQL =
  "SELECT count(*)::int FROM pg_prepared_statements WHERE statement LIKE '%chk\\_prepared%' " +
  "AND statement NOT LIKE '%pg\\_prepared\\_statements%'"

const NO_ENCODING =
  'node-postgres always starts with client_encoding=UTF8 and encodes and decodes every text as UTF-8 ' +
  '(its client_encoding option is not used for the wire), so a LATIN1 or KOI8-R session is not possible'

class Skip extends Error {}

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function describe(e) {
  const out = { type: e.constructor && e.constructor.name ? e.constructor.name : typeof e }
  if (e.code) out.sqlstate = e.code
  out.message = String(e.message || e).split('\n')[0]
  return out
}

async function runCheck(phase, name, fn) {
  let result
  try {
    result = await fn()
  } catch (e) {
    if (e instanceof Skip) {
      emit({ phase, check: name, skipped: e.message })
      return
    }
    process.stderr.write(`[${phase} ${name}] unexpected error: ${e && e.stack}\n`)
    result = { unexpected_error: describe(e) }
  }
  emit({ phase, check: name, result })
}

const stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()
async function waitGo(next) {
  emit({ phase: 'ready', next })
  const { done } = await stdinLines.next()
  if (done) throw new Error('standard input closed before ' + next)
}

async function connect(opts = {}) {
  const c = new pg.Client({
    host: HOST,
    port: PORT,
    user: opts.user || USER,
    password: opts.password || PASSWORD,
    database: opts.database || DB,
    connectionTimeoutMillis: 10000,
    ...(opts.extra || {}),
  })
  c.errors = []
  // A FATAL from the server while idle arrives as an 'error' event.
  c.on('error', (e) => c.errors.push(e))
  await c.connect()
  return c
}

async function scalar(c, text, values) {
  const r = await c.query({ text, values, rowMode: 'array' })
  return r.rows[0][0]
}

async function who(c) {
  const r = await c.query('SELECT current_user::text AS cu, session_user::text AS su')
  const ids = await c.query('SELECT id FROM public.rls_docs ORDER BY id')
  return { current_user: r.rows[0].cu, session_user: r.rows[0].su, visible_ids: ids.rows.map((x) => x.id) }
}

// ------------------------------------------------------------------ long-lived sessions

class Sessions {
  async setup() {
    this.notes = []
    this.waiter = null
    this.app = await connect()
    await this.app.query("SET work_mem = '3MB'")
    await this.app.query("SET application_name = 'driver-checks'")
    await this.app.query("SET chk.tag = 'kept'")
    await this.app.query(`SET ROLE ${ROLE_A}`)
    this.app.on('notification', (n) => {
      this.notes.push(n)
      if (this.waiter) this.waiter()
    })
    await this.app.query(`LISTEN ${CHANNEL}`)
    this.auth = await connect({ user: SUPER_USER, password: SUPER_PASSWORD })
    await this.auth.query(`SET SESSION AUTHORIZATION ${ROLE_B}`)
  }

  async check(phase) {
    await runCheck(phase, 'session_notify_from_other', () => this.notifyFromOther())
    await runCheck(phase, 'session_prepared_statement', () => this.prepared())
    await runCheck(phase, 'session_settings', () => this.settings())
    await runCheck(phase, 'session_set_role', () => who(this.app))
    await runCheck(phase, 'session_authorization', () => who(this.auth))
    await runCheck(phase, 'session_latin1', async () => { throw new Skip(NO_ENCODING) })
    await runCheck(phase, 'session_koi8r', async () => { throw new Skip(NO_ENCODING) })
    await runCheck(phase, 'session_notify_self', () => this.notifySelf())
    emit({ phase, info: 'server_major', value: await scalar(this.app, "SELECT current_setting('server_version_num')::int / 10000") })
  }

  stale() {
    const n = this.notes.length
    this.notes = []
    return n
  }

  async next() {
    if (!this.notes.length) {
      await new Promise((resolve) => {
        const t = setTimeout(resolve, NOTIFY_WAIT_MS)
        this.waiter = () => { clearTimeout(t); resolve() }
      })
      this.waiter = null
    }
    return this.notes.shift()
  }

  async notifyFromOther() {
    // Sent from a new session while this one idles: after a switch the idle listener must
    // still be listening (and told the sender's pid as its driver knows it).
    const stale = this.stale()
    const other = await connect()
    await other.query(`NOTIFY ${CHANNEL}, 'from another session'`)
    const sender = other.processID
    await other.end()
    const n = await this.next()
    if (!n) return { received: false, stale }
    return {
      received: true, stale, channel_matches: n.channel === CHANNEL, payload: n.payload,
      sender_pid_matches: n.processId === sender, own_pid_matches: n.processId === this.app.processID,
    }
  }

  async notifySelf() {
    const stale = this.stale()
    await this.app.query(`NOTIFY ${CHANNEL}, 'from myself'`)
    const n = await this.next()
    if (!n) return { received: false, stale }
    return { received: true, stale, payload: n.payload, own_pid_matches: n.processId === this.app.processID }
  }

  async prepared() {
    // A named statement: node-postgres parses it once per connection (p0) and afterwards
    // sends only Bind/Execute.
    const r = await this.app.query({ name: 'chk_prepared', text: PREPARED_SQL, values: [21], rowMode: 'array' })
    return { row: r.rows[0], named_on_server: await scalar(this.app, PREPARED_COUNT_SQL) }
  }

  async settings() {
    return {
      work_mem: await scalar(this.app, 'SHOW work_mem'),
      application_name: await scalar(this.app, 'SHOW application_name'),
      'chk.tag': await scalar(this.app, "SELECT current_setting('chk.tag')"),
    }
  }
}

// ------------------------------------------------------------------ stand-alone checks

async function withClient(opts, fn) {
  const c = await connect(opts)
  try {
    return await fn(c)
  } finally {
    await c.end().catch(() => {})
  }
}

const login = (user, password) =>
  withClient({ user, password }, async (c) => {
    const r = await c.query('SELECT current_user::text AS cu, session_user::text AS su, current_database()::text AS db')
    return { current_user: r.rows[0].cu, session_user: r.rows[0].su, database: r.rows[0].db, backend_pid_known: !!c.processID }
  })

async function wrongPassword() {
  try {
    const c = await connect({ password: 'not-the-password' })
    await c.end()
    return { connected: true }
  } catch (e) {
    return describe(e)
  }
}

const extendedProtocol = () =>
  withClient({}, async (c) => {
    const r = await c.query({
      text: "SELECT $1::int + 1, $2::text || '!', $3::numeric * 2, NOT $4::bool, $5::bytea, $6::int IS NULL",
      values: [41, 'héllo', '1.25', true, Buffer.from([0, 1, 255]), null],
      rowMode: 'array',
    })
    let err = null
    try {
      await c.query('SELECT 1 / $1::int', [0])
    } catch (e) {
      err = describe(e)
    }
    const after = await scalar(c, 'SELECT $1::text', ['still usable'])
    const norm = r.rows[0].map((v) => (Buffer.isBuffer(v) ? v.toString('hex') : String(v)))
    return { text_row: norm, error: err, after_error: after }
  })

const pipelining = () =>
  // pipeline: true (node-postgres 8.23): every query is written before the first answer.
  withClient({ extra: { pipeline: true } }, async (c) => {
    await c.query(`DELETE FROM ${S}.items WHERE t LIKE 'pipe%'`)
    const inserts = []
    for (let i = 0; i < 10; i++) inserts.push(c.query(`INSERT INTO ${S}.items (n, t) VALUES ($1, 'pipe')`, [i]))
    const sum = c.query({ text: `SELECT count(*), sum(n) FROM ${S}.items WHERE t = 'pipe'`, rowMode: 'array' })
    await Promise.all(inserts)
    const rows = (await sum).rows[0]
    const batch = [
      c.query(`INSERT INTO ${S}.items (n, t) VALUES (100, 'pipe-err')`),
      c.query('SELECT 1 / 0'),
      c.query(`INSERT INTO ${S}.items (n, t) VALUES (101, 'pipe-err')`),
    ]
    const settled = await Promise.allSettled(batch)
    const err = settled.find((s) => s.status === 'rejected')
    const kept = await scalar(c, `SELECT count(*)::int FROM ${S}.items WHERE t = 'pipe-err'`)
    return { rows, error: err ? describe(err.reason) : null, statuses: settled.map((s) => s.status), rows_kept_around_error: kept }
  })

const COPY_ROWS = []
for (let i = 1; i <= 300; i++) COPY_ROWS.push([i, `row ${i}\twith tab, 'quote', \\ backslash, é, "dq"`])
const copyEscape = (s) => s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r')
const md5 = (b) => crypto.createHash('md5').update(b).digest('hex')

const copyIn = () =>
  withClient({}, async (c) => {
    await c.query(`DELETE FROM ${S}.copy_rows`)
    const stream = c.query(copyFrom(`COPY ${S}.copy_rows (id, t) FROM STDIN`))
    await new Promise((resolve, reject) => {
      stream.on('error', reject)
      stream.on('finish', resolve)
      for (const [id, t] of COPY_ROWS) stream.write(`${id}\t${copyEscape(t)}\n`)
      stream.end()
    })
    const r = await c.query({ text: `SELECT count(*)::int, md5(string_agg(id || ':' || t, '|' ORDER BY id)) FROM ${S}.copy_rows`, rowMode: 'array' })
    const expected = md5(COPY_ROWS.map(([i, t]) => `${i}:${t}`).join('|'))
    return { rowcount: stream.rowCount, rows: r.rows[0][0], md5: r.rows[0][1], md5_expected: r.rows[0][1] === expected }
  })

async function copyOutBytes(c, sql) {
  const stream = c.query(copyTo(sql))
  const chunks = []
  await new Promise((resolve, reject) => {
    stream.on('data', (d) => chunks.push(d))
    stream.on('error', reject)
    stream.on('end', resolve)
  })
  return Buffer.concat(chunks)
}

const copyOut = () =>
  withClient({}, async (c) => {
    const data = await copyOutBytes(c, `COPY (SELECT id, t FROM ${S}.copy_rows ORDER BY id) TO STDOUT`)
    const csv = await copyOutBytes(c, `COPY (SELECT id, t FROM ${S}.copy_rows ORDER BY id LIMIT 5) TO STDOUT (FORMAT csv, HEADER)`)
    const lines = data.toString('latin1').split('\n').length - 1
    return { bytes: data.length, md5: md5(data), lines, csv_md5: md5(csv) }
  })

const cancel = () =>
  withClient({}, async (c) => {
    // node-postgres's own CancelRequest: a pg.Connection sends processID and secretKey of
    // the BackendKeyData this client got.
    const t0 = Date.now()
    const timer = setTimeout(() => {
      const con = new pg.Connection()
      con.on('connect', () => {
        con.cancel(c.processID, c.secretKey)
        con.end()
      })
      con.on('error', () => {})
      con.connect(PORT, HOST)
    }, 500)
    let res
    try {
      await c.query('SELECT pg_sleep(20)')
      res = { cancelled: false }
    } catch (e) {
      res = describe(e)
    }
    clearTimeout(timer)
    res.within_10s = Date.now() - t0 < 10000
    res.next_query = await scalar(c, "SELECT 'after cancel'")
    return res
  })

const twoPhase = () =>
  withClient({}, (observer) =>
    withClient({}, async (c) => {
      await observer.query(`DELETE FROM ${S}.twopc`)
      await c.query(`BEGIN; INSERT INTO ${S}.twopc VALUES (1, 'prepared'); PREPARE TRANSACTION '${GID}'`)
      const before = await scalar(observer, `SELECT count(*)::int FROM ${S}.twopc`)
      const listed = await scalar(observer, 'SELECT count(*)::int FROM pg_prepared_xacts WHERE gid = $1', [GID])
      await c.query(`COMMIT PREPARED '${GID}'`)
      const after = await scalar(observer, `SELECT count(*)::int FROM ${S}.twopc`)
      await observer.query(`BEGIN; INSERT INTO ${S}.twopc VALUES (2, 'to roll back'); PREPARE TRANSACTION '${GID}_2'`)
      await observer.query(`ROLLBACK PREPARED '${GID}_2'`)
      return {
        visible_before_commit: before, in_pg_prepared_xacts: listed, visible_after_commit: after,
        after_rollback_prepared: await scalar(observer, `SELECT count(*)::int FROM ${S}.twopc`),
      }
    }))

const largeObject = () =>
  withClient({}, async (c) => {
    const payload = Buffer.alloc(100000)
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 256
    await c.query('BEGIN')
    const oid = await scalar(c, 'SELECT lo_create(0)')
    const fd = await scalar(c, 'SELECT lo_open($1, $2)', [oid, 0x20000 | 0x40000])
    const written = await scalar(c, 'SELECT lowrite($1, $2)', [fd, payload])
    await c.query('SELECT lo_lseek($1, 0, 0)', [fd])
    const back = await scalar(c, 'SELECT loread($1, $2)', [fd, 200000])
    await c.query('SELECT lo_close($1)', [fd])
    await c.query('COMMIT')
    const whole = await scalar(c, 'SELECT lo_get($1)', [oid])
    const unlinked = await scalar(c, 'SELECT lo_unlink($1)', [oid])
    const left = await scalar(c, 'SELECT count(*)::int FROM pg_largeobject_metadata WHERE oid = $1', [oid])
    return { written, read_back_equal: payload.equals(back), lo_get_equal: payload.equals(whole), unlink: unlinked, left_after_unlink: left }
  })

const cursors = () =>
  withClient({}, async (c) => {
    // pg-cursor: an unnamed portal read with Execute row limits (PortalSuspended).
    const cursor = c.query(new Cursor('SELECT g, md5(g::text) FROM generate_series(1, 25) g ORDER BY g'))
    const batches = []
    for (;;) {
      const rows = await cursor.read(10)
      if (!rows.length) break
      batches.push(rows.length)
    }
    await cursor.close()
    await c.query('BEGIN')
    await c.query('DECLARE chk_plain CURSOR FOR SELECT g FROM generate_series(1, 25) g ORDER BY g')
    const fetched = []
    for (;;) {
      const r = await c.query('FETCH 7 FROM chk_plain')
      if (!r.rows.length) break
      fetched.push(r.rows.map((x) => x.g))
    }
    await c.query('CLOSE chk_plain')
    await c.query('COMMIT')
    return { named_cursor_batches: batches, declare_fetch: fetched }
  })

const rlsSetRole = () =>
  withClient({}, async (c) => {
    const out = { login: await who(c) }
    await c.query(`SET ROLE ${ROLE_A}`)
    out.set_role_a = await who(c)
    await c.query(`SET ROLE ${ROLE_B}`)
    out.set_role_b = await who(c)
    await c.query('RESET ROLE')
    out.reset_role = await who(c)
    return out
  })

const rlsSessionAuthorization = () =>
  withClient({ user: SUPER_USER, password: SUPER_PASSWORD }, async (c) => {
    const out = { login: await who(c) }
    await c.query(`SET SESSION AUTHORIZATION ${ROLE_A}`)
    out.session_authorization_a = await who(c)
    await c.query('RESET SESSION AUTHORIZATION')
    out.reset = await who(c)
    return out
  })

const statementTimeout = () =>
  withClient({}, async (c) => {
    await c.query("SET statement_timeout = '300ms'")
    let res
    try {
      await c.query('SELECT pg_sleep(5)')
      res = { timed_out: false }
    } catch (e) {
      res = describe(e)
    }
    await c.query('RESET statement_timeout')
    res.next_query = await scalar(c, "SELECT 'after timeout'")
    return res
  })

async function idleInTransactionTimeout() {
  const c = await connect()
  try {
    await c.query("SET idle_in_transaction_session_timeout = '300ms'")
    await c.query('BEGIN')
    await c.query('SELECT 1')
    await sleep(2000)
    const res = { error_event: c.errors.length ? describe(c.errors[0]) : null }
    try {
      await c.query('SELECT 2')
      res.ended = false
    } catch (e) {
      res.next_query_error = describe(e)
    }
    return res
  } finally {
    await c.end().catch(() => {})
  }
}

const secondDatabase = () =>
  withClient({ database: DB2 }, async (c) => {
    const r = await c.query('SELECT current_database()::text AS db, (SELECT v FROM marker WHERE id = 1) AS v')
    return { database: r.rows[0].db, marker: r.rows[0].v }
  })

async function concurrent(n = 50) {
  const results = await Promise.all(
    Array.from({ length: n }, () => connect().then((c) => ({ c }), (e) => ({ e }))))
  const conns = results.filter((r) => r.c).map((r) => r.c)
  try {
    const answers = await Promise.all(conns.map((c, i) => scalar(c, 'SELECT $1::int', [i])))
    return {
      connected: conns.length,
      answers_right: answers.every((v, i) => v === i),
      distinct_pids: new Set(conns.map((c) => c.processID)).size,
      errors: [...new Set(results.filter((r) => r.e).map((r) => JSON.stringify(describe(r.e))))].sort(),
    }
  } finally {
    await Promise.all(conns.map((c) => c.end().catch(() => {})))
  }
}

async function standalone(phase) {
  const skipEncoding = async () => { throw new Skip(NO_ENCODING) }
  await runCheck(phase, 'scram_login', () => login(USER, PASSWORD))
  await runCheck(phase, 'md5_login', () => login(MD5_USER, MD5_PASSWORD))
  await runCheck(phase, 'wrong_password', wrongPassword)
  await runCheck(phase, 'extended_protocol', extendedProtocol)
  await runCheck(phase, 'pipelining', pipelining)
  await runCheck(phase, 'copy_in', copyIn)
  await runCheck(phase, 'copy_out', copyOut)
  await runCheck(phase, 'cancel', cancel)
  await runCheck(phase, 'two_phase_commit', twoPhase)
  await runCheck(phase, 'large_object', largeObject)
  await runCheck(phase, 'server_side_cursor', cursors)
  await runCheck(phase, 'rls_set_role', rlsSetRole)
  await runCheck(phase, 'rls_session_authorization', rlsSessionAuthorization)
  await runCheck(phase, 'latin1_text', skipEncoding)
  await runCheck(phase, 'latin1_query_text', skipEncoding)
  await runCheck(phase, 'koi8r_text', skipEncoding)
  await runCheck(phase, 'koi8r_query_text', skipEncoding)
  await runCheck(phase, 'statement_timeout', statementTimeout)
  await runCheck(phase, 'idle_in_transaction_timeout', idleInTransactionTimeout)
  await runCheck(phase, 'second_database', secondDatabase)
  await runCheck(phase, 'concurrent_50', concurrent)
}

async function main() {
  const s = new Sessions()
  await s.setup()
  await s.check('p0')
  await waitGo('p1')
  await s.check('p1')
  await standalone('p1')
  await withClient({}, async (c) =>
    emit({ phase: 'p1', info: 'new_connection_server_major', value: await scalar(c, "SELECT current_setting('server_version_num')::int / 10000") }))
  await waitGo('p2')
  await s.check('p2')
  await Promise.all([s.app.end(), s.auth.end()].map((p) => p.catch(() => {})))
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`fatal: ${e && e.stack}\n`)
    process.exit(1)
  })
