//! Ending a foreground daemon (`xenshare xenstored`, `xenshare host`) on
//! SIGTERM, SIGINT or SIGHUP without leaving its socket files behind.
//!
//! The daemons' own `Drop`s remove their sockets, but a signal's default
//! action ends the process without running them. So the daemon's main
//! thread waits for one of these signals (the handler only writes to a
//! self-pipe, through `signal-hook`), removes the files it created, and
//! exits. Removal is by path and only of sockets, so nothing else that
//! happens to sit there is touched.

use std::path::{Path, PathBuf};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The signals that end a daemon cleanly.
const TERMINATING: [i32; 3] = [SIGTERM, SIGINT, SIGHUP];

/// A handler for the terminating signals, installed before the daemon
/// starts so that no signal arriving during start-up is lost.
pub struct Termination(Signals);

impl std::fmt::Debug for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Termination")
    }
}

impl Termination {
    /// Installs the handler (from now on SIGTERM, SIGINT and SIGHUP no
    /// longer end the process by themselves).
    pub fn install() -> Result<Self, String> {
        Signals::new(TERMINATING)
            .map(Termination)
            .map_err(|e| format!("cannot handle SIGTERM/SIGINT: {e}"))
    }

    /// Blocks until a terminating signal arrives; returns its name.
    pub fn wait(mut self) -> &'static str {
        loop {
            if let Some(sig) = self.0.forever().next() {
                return match sig {
                    SIGTERM => "SIGTERM",
                    SIGINT => "SIGINT",
                    _ => "SIGHUP",
                };
            }
        }
    }
}

/// Removes `path` if it is a Unix socket; returns whether it did.
pub fn remove_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).is_ok(),
        _ => false,
    }
}

/// The per-domain xenstored sockets of host socket `host`
/// (`<host>.d<N>.xs`, as `xenshare_host::toolstack::domain_xenstore_path`
/// names them) that exist now.
pub fn domain_sockets(host: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (host.parent(), host.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.d", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".xs"))
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_this_hosts_domain_sockets() {
        let dir = std::env::temp_dir().join(format!("xenshare-shutdown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "h.d1.xs",
            "h.d42.xs",
            "h.dx.xs",
            "h.d.xs",
            "hh.d1.xs",
            "h.d1.xs.bak",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let mut got: Vec<String> = domain_sockets(&dir.join("h"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, ["h.d1.xs", "h.d42.xs"]);
        // Regular files are not sockets: never removed.
        assert!(!remove_socket(&dir.join("h.d1.xs")));
        assert!(dir.join("h.d1.xs").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
