//! Shared proxy state, the listener and the cancel path.

use crate::routing::Router;
use crate::session;
use config::{AuthMethod, Config, UserConfig};
use control::{Controller, Side};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::net::TcpListener;
use wire::auth::ScramVerifier;

/// A configured login with its precomputed SCRAM verifier.
pub struct UserEntry {
    pub cfg: UserConfig,
    pub verifier: Option<ScramVerifier>,
}

/// Session state visible to the admin console and the cancel path.
pub struct SessionInfo {
    /// pgshift's own BackendKeyData handed to the client.
    pub pid: i32,
    pub secret: i32,
    pub user: String,
    pub database: String,
    pub client_addr: SocketAddr,
    pub connected_at: SystemTime,
    pub admin: bool,
    /// 0 none, 1 source, 2 target.
    pub side: AtomicU8,
    pub backend_pid: AtomicI32,
    pub backend_secret: AtomicI32,
    /// [`STATE_IDLE`], [`STATE_ACTIVE`] or [`STATE_HELD`].
    pub state: AtomicU8,
    /// Backend switches made by this session.
    pub switches: AtomicU64,
    /// What pins the session to its server process, as [`crate::session::pins`] bits (0:
    /// nothing; the session can move).
    pub pinned: AtomicU8,
}

/// How long the owner of an ended session's backend processes is remembered
/// ([`Proxy::session_of_backend`]): long enough for its last notifications to be delivered.
pub const BACKEND_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);

pub const STATE_IDLE: u8 = 0;
pub const STATE_ACTIVE: u8 = 1;
pub const STATE_HELD: u8 = 2;

impl SessionInfo {
    pub fn side(&self) -> Option<Side> {
        match self.side.load(Ordering::Relaxed) {
            1 => Some(Side::Source),
            2 => Some(Side::Target),
            _ => None,
        }
    }
    pub fn set_backend(&self, side: Side, pid: i32, secret: i32) {
        self.side
            .store(if side == Side::Source { 1 } else { 2 }, Ordering::Relaxed);
        self.backend_pid.store(pid, Ordering::Relaxed);
        self.backend_secret.store(secret, Ordering::Relaxed);
    }
}

/// (side, server pid) → (pgshift pid, when its session ended; `None` while it runs).
type BackendOwners = HashMap<(Side, i32), (i32, Option<Instant>)>;

/// Everything sessions share.
pub struct Proxy {
    pub cfg: Arc<Config>,
    pub users: HashMap<String, Arc<UserEntry>>,
    /// The mock SCRAM verifiers of unknown users ([`MockScram::verifier`]).
    pub mock: MockScram,
    /// `[proxy.tls]`: the TLS set-up offered to clients, `None` when disabled.
    pub tls: Option<tls::Acceptor>,
    pub router: Arc<Router>,
    pub controller: Arc<Controller>,
    /// Runtime of the control plane: admin commands run there, not on the I/O threads.
    pub control_rt: tokio::runtime::Handle,
    pub sessions: Mutex<HashMap<i32, Arc<SessionInfo>>>,
    /// Which session opened each backend process: (side, server pid) → pgshift pid and, once
    /// the session ended, when. For NotificationResponse, whose pid names the notifying
    /// process even after its session closed; ended entries are kept [`BACKEND_MEMORY`].
    backends: Mutex<BackendOwners>,
    next_pid: AtomicI32,
    /// Mirroring with result validation (`[mirror] enabled`).
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
    /// The `mirror` replication driver's capture (`[replication] driver = "mirror"`).
    pub capture: Option<Arc<crate::capture::Engine>>,
    /// Open client sessions, against `max_client_connections` and per-user limits.
    pub limits: crate::session::limits::Limits,
    /// What sessions buffer, against `[proxy] session_memory_bytes`.
    pub memory: crate::session::memory::Budget,
}

impl Proxy {
    pub fn new(
        cfg: Arc<Config>,
        router: Arc<Router>,
        controller: Arc<Controller>,
        mirror: Option<Arc<crate::mirror::Mirror>>,
        capture: Option<Arc<crate::capture::Engine>>,
        tls: Option<tls::Acceptor>,
    ) -> Arc<Proxy> {
        let users = cfg
            .users
            .iter()
            .map(|u| {
                let verifier = match (u.auth, &u.password) {
                    (AuthMethod::ScramSha256, Some(p)) => Some(ScramVerifier::generate(p)),
                    _ => None,
                };
                (
                    u.name.clone(),
                    Arc::new(UserEntry {
                        cfg: u.clone(),
                        verifier,
                    }),
                )
            })
            .collect();
        let memory = crate::session::memory::Budget::new(cfg.proxy.session_memory_bytes);
        Arc::new(Proxy {
            memory,
            cfg,
            users,
            mock: MockScram::new(),
            router,
            controller,
            control_rt: tokio::runtime::Handle::current(),
            sessions: Mutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(std::process::id() as i32 % 1000 * 10000 + 1),
            mirror,
            capture,
            tls,
            limits: Default::default(),
        })
    }

    /// Register a session; returns its info (with a fresh pid and secret).
    pub fn register(
        &self,
        user: &str,
        database: &str,
        client_addr: SocketAddr,
        admin: bool,
    ) -> Arc<SessionInfo> {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        let info = Arc::new(SessionInfo {
            pid,
            secret: rand::random::<i32>(),
            user: user.to_string(),
            database: database.to_string(),
            client_addr,
            connected_at: SystemTime::now(),
            admin,
            side: AtomicU8::new(0),
            backend_pid: AtomicI32::new(0),
            backend_secret: AtomicI32::new(0),
            state: AtomicU8::new(STATE_IDLE),
            pinned: AtomicU8::new(0),
            switches: AtomicU64::new(0),
        });
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, info.clone());
        info
    }

    pub fn unregister(&self, pid: i32) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        let now = Instant::now();
        let mut b = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        for (owner, ended) in b.values_mut() {
            if *owner == pid {
                *ended = Some(now);
            }
        }
    }

    /// Session `pid` opened a connection to server process `backend_pid` on `side`.
    pub fn note_backend(&self, side: Side, backend_pid: i32, pid: i32) {
        let mut b = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= 1024 {
            let now = Instant::now();
            b.retain(|_, (_, ended)| ended.is_none_or(|t| now - t < BACKEND_MEMORY));
        }
        b.insert((side, backend_pid), (pid, None));
    }

    /// The pgshift pid (the one its client was given in BackendKeyData) of the session that
    /// opened server process `backend_pid` on `side`, if a pgshift session did.
    pub fn session_of_backend(&self, side: Side, backend_pid: i32) -> Option<i32> {
        let b = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        b.get(&(side, backend_pid)).map(|(pid, _)| *pid)
    }

    pub fn session_list(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| s.pid);
        v
    }

    /// Forward a client's CancelRequest to the backend now serving that session. Wrong keys
    /// are ignored silently, as PostgreSQL does (53.2.7).
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let info = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned();
        let Some(info) = info else {
            tracing::debug!(pid, "cancel request for unknown session");
            return;
        };
        if info.secret != secret {
            tracing::warn!(pid, "cancel request with a wrong secret key ignored");
            return;
        }
        let Some(side) = info.side() else { return };
        let table = self.router.load();
        let addr = table.addr(side).clone();
        let (bpid, bsecret) = (
            info.backend_pid.load(Ordering::Relaxed),
            info.backend_secret.load(Ordering::Relaxed),
        );
        if let Err(e) = crate::backend::cancel(&addr.host, addr.port, bpid, bsecret).await {
            tracing::warn!(pid, error = %e, "could not forward cancel request");
        }
    }
}

/// Client sessions run on `n` single-threaded runtimes, one thread each (a session never
/// migrates between threads: no work-stealing wake-ups on the relay path). Sessions are
/// handed out round-robin at accept.
pub struct Shards {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
}

impl Shards {
    /// Start `n` I/O threads (0: half the cores, at least 1).
    pub fn start(n: usize) -> std::io::Result<Shards> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        } else {
            n
        };
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("pgshift-io-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let h = rx
                .recv()
                .map_err(|_| std::io::Error::other("I/O thread died at start"))??;
            handles.push(h);
        }
        Ok(Shards {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

/// Accept clients until the process ends.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, shards: Shards) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let p = proxy.clone();
                // Move the socket to the chosen I/O thread's reactor.
                match sock.into_std() {
                    Ok(std_sock) => {
                        shards.pick().spawn(async move {
                            match tokio::net::TcpStream::from_std(std_sock) {
                                Ok(sock) => session::run(p, sock, peer).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot register client socket")
                                }
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot hand over client socket"),
                }
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Mock SCRAM verifiers for user names pgshift does not know, so that their exchange looks
/// like a wrong password's: the salt of a name is the first 16 bytes of
/// HMAC-SHA-256(secret, name) with a per-process random secret (as PostgreSQL's
/// `scram_mock_salt`, src/backend/libpq/auth-scram.c, derives it from its `mock_auth_nonce`),
/// so one name always gets the same salt and two names different ones; comparing salts
/// tells nothing about which names exist. The keys are random (no password matches them) and
/// no PBKDF2 runs for a mock, which would make unknown names slower than known ones.
pub struct MockScram {
    secret: [u8; 64],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl MockScram {
    /// A new secret and keys from the OS's random source.
    pub fn new() -> MockScram {
        MockScram {
            secret: {
                let mut b = [0u8; 64];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
                b
            },
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    /// The mock verifier of `name`: its derived salt, 4096 iterations (PostgreSQL's default).
    pub fn verifier(&self, name: &str) -> ScramVerifier {
        use hmac::digest::KeyInit;
        use hmac::{Hmac, Mac};
        // A 64-byte key is SHA-256's block size: the fixed-size constructor, no fallible path.
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new(&self.secret.into());
        mac.update(name.as_bytes());
        let salt = mac.finalize().into_bytes();
        ScramVerifier::from_keys(
            &salt[..16],
            wire::auth::DEFAULT_ITERATIONS,
            self.stored_key,
            self.server_key,
        )
    }
}

impl Default for MockScram {
    fn default() -> Self {
        MockScram::new()
    }
}

#[cfg(test)]
mod mock_tests {
    use super::MockScram;

    #[test]
    fn mock_salt_per_name() {
        let m = MockScram::new();
        let a = m.verifier("nobody");
        assert_eq!(a.salt().len(), 16);
        assert_eq!(
            a.salt(),
            m.verifier("nobody").salt(),
            "same name, same salt"
        );
        assert_ne!(a.salt(), m.verifier("nobody2").salt());
        assert_ne!(a.salt(), m.verifier("Nobody").salt());
        assert_eq!(a.iterations(), 4096);
        // Another process (secret) gives another salt.
        assert_ne!(a.salt(), MockScram::new().verifier("nobody").salt());
        // Many names: no two share a salt.
        let salts: std::collections::HashSet<Vec<u8>> = (0..2000)
            .map(|i| m.verifier(&format!("user{i}")).salt().to_vec())
            .collect();
        assert_eq!(salts.len(), 2000);
    }

    /// A full SCRAM exchange of an unknown user against its mock: the server-first message
    /// carries the name's salt, and the proof fails whatever the password.
    #[test]
    fn mock_exchange_fails_and_shows_the_name_salt() {
        use base64::Engine as _;
        use wire::auth::{ScramClient, ScramServer};
        let m = MockScram::new();
        for password in ["", "app-secret", "guess"] {
            let mut server = ScramServer::new(m.verifier("ghost"));
            let mut client = ScramClient::new(password);
            let first = client.client_first();
            let server_first = server.client_first("SCRAM-SHA-256", &first).unwrap();
            let text = String::from_utf8(server_first.clone()).unwrap();
            let salt = text.split(',').find_map(|f| f.strip_prefix("s=")).unwrap();
            assert_eq!(
                base64::engine::general_purpose::STANDARD
                    .decode(salt)
                    .unwrap(),
                m.verifier("ghost").salt()
            );
            let client_final = client.server_first(&server_first).unwrap();
            assert!(server.client_final(&client_final).is_err(), "{password:?}");
        }
    }
}
