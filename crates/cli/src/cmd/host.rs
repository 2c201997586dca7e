//! `xenshare host` and `xenshare exec`: the multi-process emulator daemon,
//! and running a program as one of its domains.

use std::path::PathBuf;

use xenshare::DomId;
use xenshare_host::{Host, HostConfig};

/// Options of `xenshare host`.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// The RPC socket domains join through.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The xenstored socket (default: PATH.xs).
    #[arg(long, value_name = "PATH")]
    pub xenstore_socket: Option<PathBuf>,
    /// The smallest id the host assigns to a joining domain (at least 1:
    /// dom0 is the host itself).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..0x7ff0))]
    pub first_domid: u16,
}

/// Runs the daemon in the foreground until SIGTERM, SIGINT or SIGHUP; then
/// removes its sockets (RPC, dom0's and every domain's xenstored) and its
/// token file, and exits.
pub fn run(a: HostArgs) -> Result<(), String> {
    let term = super::shutdown::Termination::install()?;
    let mut cfg = HostConfig::new(&a.socket);
    cfg.xenstore_socket = a.xenstore_socket;
    cfg.first_domid = DomId(a.first_domid);
    let host = Host::spawn(cfg).map_err(|e| e.to_string())?;
    eprintln!(
        "xenshare host: listening on {} (dom0's xenstored on {}, privilege token in {})",
        host.path().display(),
        host.xenstore_path().display(),
        host.token_path().display()
    );
    let sig = term.wait();
    // Exit without running the daemon's destructors (they wait for the
    // domains' connections): remove what it created on disk, by path.
    super::shutdown::remove_socket(host.path());
    super::shutdown::remove_socket(host.xenstore_path());
    for p in super::shutdown::domain_sockets(host.path()) {
        super::shutdown::remove_socket(&p);
    }
    let _ = std::fs::remove_file(host.token_path());
    eprintln!("xenshare host: {sig}: sockets and token removed");
    std::process::exit(0)
}

/// Options of `xenshare exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The domain id the program runs as (default: the host assigns one;
    /// choosing one needs the host's privilege, i.e. its owner).
    #[arg(long, value_name = "N")]
    pub domid: Option<u16>,
    /// The host daemon's socket (default: $XENSHARE_HOST).
    #[arg(long, value_name = "PATH")]
    pub host: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub cmd: Vec<String>,
}

/// The host socket from an option or the environment.
pub fn host_path(opt: Option<PathBuf>) -> Result<PathBuf, String> {
    opt.or_else(|| std::env::var_os(xenshare_host::client::ENV_HOST).map(PathBuf::from))
        .ok_or_else(|| "no host daemon given: pass --host PATH or set XENSHARE_HOST".to_string())
}

/// Runs a program as a new domain of the host. This process joins (the
/// host assigns the id, or creates the chosen one for its owner) and hands
/// the joined connection down to the program (`XENSHARE_HOST_FD`), with
/// the domain's own xenstored socket in `XENSTORED_PATH`. The domain dies
/// when the program and this process have both exited.
pub fn exec(a: ExecArgs) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let host = host_path(a.host)?;
    let lease =
        xenshare_host::client::Lease::join(&host, a.domid.map(DomId)).map_err(|e| match e {
            xenshare_host::ClientError::NoHost { .. } => format!(
                "{e} (start it with `xenshare host --socket {}`)",
                host.display()
            ),
            e => format!("cannot create the domain: {e}"),
        })?;
    let fd = lease.inheritable_fd().map_err(|e| e.to_string())?;
    let (prog, args) = a.cmd.split_first().ok_or("no command given")?;
    let mut cmd = std::process::Command::new(prog);
    match compat_lib_dir() {
        Ok(dir) => {
            let mut ld = dir.into_os_string();
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
                ld.push(":");
                ld.push(old);
            }
            cmd.env("LD_LIBRARY_PATH", ld);
        }
        // Programs that do not use Xen's libraries still run.
        Err(e) => eprintln!("xenshare exec: warning: {e}"),
    }
    let status = cmd
        .args(args)
        .env(xenshare_host::client::ENV_HOST, &host)
        .env(xenshare_host::client::ENV_DOMID, lease.id().0.to_string())
        .env(
            xenshare_host::client::ENV_HOST_FD,
            fd.as_raw_fd().to_string(),
        )
        .env("XENSTORED_PATH", lease.xenstore_path())
        .status()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    drop(lease);
    if status.success() {
        Ok(())
    } else {
        Err(format!("{prog} exited with {status}"))
    }
}

/// The compat cdylib, as cargo names it, next to the `xenshare` binary.
const COMPAT_LIB: &str = "libxenshare_compat.so";

/// A directory holding `libxengnttab.so.1`, `libxenevtchn.so.1` and
/// `libxenctrl.so.4.17`: all are symlinks to the one compat library (crate `xenshare-compat`) built
/// next to this binary, so the loader maps it once under both names.
fn compat_lib_dir() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot locate the xenshare binary: {e}"))?;
    let bin_dir = exe.parent().ok_or("the xenshare binary has no directory")?;
    // Test binaries live in target/<profile>/deps; the library one level up.
    let lib = [bin_dir.to_path_buf(), bin_dir.join("..")]
        .into_iter()
        .map(|d| d.join(COMPAT_LIB))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{COMPAT_LIB} is not built next to {} (run `cargo build -p xenshare-compat` with the same profile); \
                 Xen's C programs will load the system libxengnttab/libxenevtchn",
                exe.display()
            )
        })?;
    let lib = lib
        .canonicalize()
        .map_err(|e| format!("{}: {e}", lib.display()))?;
    let dir = lib
        .parent()
        .ok_or("library without a directory")?
        .join("xenshare-compat-libs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for name in [
        "libxengnttab.so.1",
        "libxenevtchn.so.1",
        "libxenctrl.so.4.17",
    ] {
        let link = dir.join(name);
        if std::fs::read_link(&link).ok().as_deref() == Some(lib.as_path()) {
            continue;
        }
        // Build the link under a unique name, then rename it into place
        // (atomic, safe against concurrent `xenshare exec`s).
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&lib, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &link))
            .map_err(|e| format!("cannot create {}: {e}", link.display()))?;
    }
    Ok(dir)
}
