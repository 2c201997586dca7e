//! `xenshare xenstored`: run the XenStore daemon in the foreground.

use std::path::PathBuf;

use xenshare_xenstored::Config;

/// Options of `xenshare xenstored`.
#[derive(Debug, clap::Args)]
pub struct XenstoredArgs {
    /// Unix socket to listen on (point clients at it with XENSTORED_PATH).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Nodes a guest domain may own.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_nodes)]
    pub quota_nodes: usize,
    /// Largest value a guest may store in one node, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_node_size)]
    pub quota_node_size: usize,
    /// Watches per guest domain.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_watches)]
    pub quota_watches: usize,
    /// Open transactions per guest domain.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_transactions)]
    pub quota_transactions: usize,
    /// Permission entries per node a guest may set.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_perms)]
    pub quota_perms: usize,
    /// Nodes one guest transaction may touch.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_tx_nodes)]
    pub quota_transaction_nodes: usize,
    /// Replies a guest may leave unread before its requests are not read.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_outstanding)]
    pub quota_outstanding: usize,
    /// Bytes of node names, values and permissions a guest domain may own
    /// (writes past it fail with ENOMEM).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_memory)]
    pub quota_memory: usize,
    /// Bytes of output queued to one connection that does not read it;
    /// past it its watch events are dropped (and counted).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().max_queued_bytes)]
    pub max_queued_bytes: usize,
    /// Path length allowed after `/local/domain/<N>/` (at most 2048).
    #[arg(long, value_name = "N", default_value_t = Config::default().max_path_len)]
    pub path_max: usize,
}

impl XenstoredArgs {
    fn config(&self) -> Result<Config, String> {
        let max_path = xenshare::store::wire::REL_PATH_MAX;
        if self.path_max == 0 || self.path_max > max_path {
            return Err(format!("--path-max must be between 1 and {max_path}"));
        }
        let positive = [
            ("--quota-nodes", self.quota_nodes),
            ("--quota-watches", self.quota_watches),
            ("--quota-outstanding", self.quota_outstanding),
            ("--quota-memory", self.quota_memory),
            ("--max-queued-bytes", self.max_queued_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        Ok(Config {
            max_nodes: self.quota_nodes,
            max_node_size: self.quota_node_size,
            max_watches: self.quota_watches,
            max_transactions: self.quota_transactions,
            max_perms: self.quota_perms,
            max_tx_nodes: self.quota_transaction_nodes,
            max_path_len: self.path_max,
            max_outstanding: self.quota_outstanding,
            max_memory: self.quota_memory,
            max_queued_bytes: self.max_queued_bytes,
            ..Config::default()
        })
    }
}

/// Runs the daemon on `args.socket` until SIGTERM, SIGINT or SIGHUP; then
/// removes the socket and exits.
pub fn run(args: XenstoredArgs) -> Result<(), String> {
    let config = args.config()?;
    let term = super::shutdown::Termination::install()?;
    let server = xenshare_xenstored::spawn(config, &args.socket)
        .map_err(|e| format!("cannot serve on {}: {e}", args.socket.display()))?;
    eprintln!(
        "xenshare xenstored: listening on {} (export XENSTORED_PATH={})",
        server.path().display(),
        server.path().display()
    );
    let sig = term.wait();
    // Exit without waiting for clients to go: remove the socket by path.
    super::shutdown::remove_socket(server.path());
    eprintln!("xenshare xenstored: {sig}: socket removed");
    std::process::exit(0)
}
