//! The host's toolstack and who may do what.
//!
//! On Xen a domain's identity is fixed by the hypervisor: its XenStore
//! connection is its shared ring, so xenstored knows who is talking; the
//! toolstack (`xl`, libxl) picks the domain id, creates
//! `/local/domain/<N>` and introduces the domain. This module does the same
//! for the multi-process emulator:
//!
//! * **Domain ids are assigned, not claimed.** A process joins asking for
//!   any id; only a privileged caller may ask for a chosen one, and nobody
//!   may be domain 0 (the host itself is dom0).
//! * **Each domain has its own XenStore socket**
//!   (`<host socket>.d<N>.xs`, mode 0600, connections checked by
//!   `SO_PEERCRED` against the user that joined) whose connections are
//!   domain N, the way a guest's ring is. It stands in for the ring:
//!   unmodified C programs (libxenstore honours `XENSTORED_PATH`) reach
//!   xenstored as their own domain. It goes away when the domain dies.
//! * **The toolstack writes the domain's home** as libxl does:
//!   `/local/domain/<N>` owned by dom0 and readable by N, holding `domid`
//!   and `name`; `data`, `drivers`, `feature`, `attr` and `error` owned by
//!   N. Then `@introduceDomain` fires. When the domain dies its home is
//!   removed and `@releaseDomain` fires.
//! * **Privilege** (choosing a domain id, the grant inspector) needs the
//!   host's token: 32 random bytes in `<host socket>.token`, mode 0600,
//!   new at every start, and a peer of the host's own user (or root). The
//!   sockets themselves are mode 0600. A program run as a domain under
//!   `xenshare exec` is given none of this.
//!
//! Processes of the host owner's user are one trust domain for the kernel:
//! such a process could read the token file or connect to dom0's socket on
//! purpose. What the emulator guarantees is that a domain program using
//! the handles it is given (its host connection, `XENSTORED_PATH`) acts as
//! its own domain only, and that other users get nothing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use xenshare::store::perms::Perm;
use xenshare::store::{Client, PermKind, Perms};
use xenshare::DomId;
use xenshare_xenstored::{inproc, Daemon, ServerHandle, SocketAccess};

/// Bytes in the privilege token.
pub const TOKEN_LEN: usize = 32;

/// Subdirectories of a domain's home that the domain owns (as libxl
/// creates them).
const DOMAIN_OWNED: &[&str] = &["data", "drivers", "feature", "attr", "error"];
/// Subdirectories dom0 owns and the domain may read.
const DOMAIN_READABLE: &[&str] = &["device", "control"];

/// Why the toolstack could not set a domain up.
#[derive(Debug, thiserror::Error)]
pub enum ToolstackError {
    /// Writing the domain's XenStore entries failed.
    #[error("xenstore set-up of domain {0}: {1}")]
    Store(DomId, String),
    /// The domain's XenStore socket could not be created.
    #[error("xenstore socket of domain {0} at {1}: {2}")]
    Socket(DomId, PathBuf, std::io::Error),
}

/// The privilege token path for a host socket.
pub fn token_path(host_socket: &Path) -> PathBuf {
    suffixed(host_socket, ".token")
}

/// The XenStore socket path of domain `domid` for a host socket.
pub fn domain_xenstore_path(host_socket: &Path, domid: DomId) -> PathBuf {
    suffixed(host_socket, &format!(".d{}.xs", domid.0))
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The host's secret: whoever presents it (as the host's user) is
/// privileged.
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    /// A fresh random token, written to `path` (mode 0600, replacing an old
    /// one).
    pub fn create(path: &Path) -> std::io::Result<Token> {
        let mut t = [0u8; TOKEN_LEN];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut t)?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(&t)?;
        Ok(Token(t))
    }

    /// Reads the token at `path` (for privileged tools).
    pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(TOKEN_LEN);
        std::fs::File::open(path)?
            .take(TOKEN_LEN as u64 + 1)
            .read_to_end(&mut v)?;
        Ok(v)
    }

    /// True if `given` is this token (compared in constant time).
    pub fn matches(&self, given: &[u8]) -> bool {
        if given.len() != TOKEN_LEN {
            return false;
        }
        self.0
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// What the host does to XenStore when domains come and go.
pub struct Toolstack {
    xs: Daemon,
    host_socket: PathBuf,
    sockets: Mutex<HashMap<u16, ServerHandle>>,
}

fn perms(entries: &[(DomId, PermKind)]) -> Perms {
    let v = entries
        .iter()
        .map(|&(domid, kind)| Perm { domid, kind })
        .collect();
    Perms::from_entries(v).unwrap_or_else(|| Perms::owned_by(DomId::DOM0, PermKind::None))
}

impl Toolstack {
    /// A toolstack for the xenstored `xs` of the host listening on
    /// `host_socket`.
    pub fn new(xs: Daemon, host_socket: &Path) -> Toolstack {
        Toolstack {
            xs,
            host_socket: host_socket.to_path_buf(),
            sockets: Mutex::new(HashMap::new()),
        }
    }

    /// Creates `domid`'s XenStore home and socket (reachable by user
    /// `uid`), then introduces it. Returns the socket path.
    pub fn create(&self, domid: DomId, uid: u32) -> Result<PathBuf, ToolstackError> {
        let store = |e: xenshare::store::ClientError| ToolstackError::Store(domid, e.to_string());
        let mut c: Client<_> = inproc::client(&self.xs, DomId::DOM0);
        let home = format!("/local/domain/{}", domid.0);
        let ro = perms(&[(DomId::DOM0, PermKind::None), (domid, PermKind::Read)]);
        let rw = Perms::owned_by(domid, PermKind::None);
        // A stale home of an earlier domain with this id goes first.
        c.transaction(16, |tx| {
            match tx.rm(&home) {
                Err(e) if e.xs() != Some(xenshare::store::XsError::ENOENT) => return Err(e),
                _ => {}
            }
            tx.mkdir(&home)?;
            tx.set_perms(&home, &ro)?;
            tx.write(&format!("{home}/domid"), domid.0.to_string().as_bytes())?;
            tx.write(
                &format!("{home}/name"),
                format!("dom{}", domid.0).as_bytes(),
            )?;
            for d in DOMAIN_READABLE {
                tx.mkdir(&format!("{home}/{d}"))?;
            }
            for d in DOMAIN_OWNED {
                let p = format!("{home}/{d}");
                tx.mkdir(&p)?;
                tx.set_perms(&p, &rw)?;
            }
            Ok(())
        })
        .map_err(store)?;
        let path = domain_xenstore_path(&self.host_socket, domid);
        let server = xenshare_xenstored::serve_as(
            self.xs.clone(),
            &path,
            SocketAccess {
                domid,
                mode: 0o600,
                uid: Some(uid),
            },
        )
        .map_err(|e| ToolstackError::Socket(domid, path.clone(), e))?;
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domid.0, server);
        self.xs
            .introduce_domain(domid)
            .map_err(|e| ToolstackError::Store(domid, e.to_string()))?;
        Ok(path)
    }

    /// Tears `domid` down: its socket and connections go, its home is
    /// removed, then `@releaseDomain` fires.
    pub fn destroy(&self, domid: DomId) {
        let server = self
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domid.0);
        drop(server);
        let mut c = inproc::client(&self.xs, DomId::DOM0);
        let _ = c.rm(&format!("/local/domain/{}", domid.0));
        // ENOENT if it was never introduced: nothing to tell.
        let _ = self.xs.release_domain(domid);
    }
}
