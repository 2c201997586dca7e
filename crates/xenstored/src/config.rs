//! Daemon limits. Quotas apply to unprivileged domains only, as in C
//! xenstored; the defaults are C xenstored 4.17's.

/// Default of [`Config::poll_budget`], in microseconds.
const DEFAULT_POLL_BUDGET_US: u64 = 0;

/// Quotas and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Nodes a domain may own (`-e`, default 1000). Exceeding: `ENOSPC`.
    pub max_nodes: usize,
    /// Largest value a domain may store in one node, in bytes (`-S`,
    /// default 2048). Exceeding: `ENOSPC`.
    pub max_node_size: usize,
    /// Watches per domain (`-W`, default 128). Exceeding: `E2BIG`.
    pub max_watches: usize,
    /// Open transactions per domain (`-t`, default 10). Exceeding: `ENOSPC`.
    pub max_transactions: usize,
    /// Permission entries per node a domain may set (`-A`, default 5).
    /// Exceeding: `ENOSPC`.
    pub max_perms: usize,
    /// Nodes one transaction of a domain may touch (default 1024).
    /// Exceeding: `ENOSPC`.
    pub max_tx_nodes: usize,
    /// Path length after `/local/domain/<N>/` (`-M`, default and maximum
    /// 2048).
    pub max_path_len: usize,
    /// Replies a domain's connection may have queued before the daemon stops
    /// reading its requests (`-Q outstanding`, default 20). Dom0 sockets use
    /// [`Config::dom0_outstanding`].
    pub max_outstanding: usize,
    /// The same bound for dom0 connections (default 1024).
    pub dom0_outstanding: usize,
    /// Bytes of memory the nodes owned by one domain may take: their path
    /// names, values and permission entries (C xenstored's hard memory
    /// quota, `-Q memory`, default 2.5 MiB). Exceeding: `ENOMEM`.
    pub max_memory: usize,
    /// Bytes of output queued to one connection that does not read it, on
    /// every transport. Past it, watch events for that connection are
    /// dropped (and counted); replies are still queued, up to
    /// [`Config::reply_headroom`] more, past which the connection is
    /// closed (default 1 MiB).
    pub max_queued_bytes: usize,
    /// Extra bytes of replies (only) a connection may have queued above
    /// [`Config::max_queued_bytes`] before it is closed (default: room for
    /// `dom0_outstanding` replies of the largest size).
    pub reply_headroom: usize,
    /// How long the socket event loop keeps polling (`epoll_wait` with a
    /// zero timeout) after a turn that served a connection, before it
    /// sleeps: a client's next request is then picked up without waking
    /// the loop's CPU from idle (on a virtual machine, an inter-processor
    /// interrupt and a VM exit). Polling only ever follows work and never
    /// lasts longer than this, so an idle daemon sleeps. Zero (the
    /// default): never poll. Measured on a two-CPU VM with four clients,
    /// 20–50 µs gained nothing: the loop rarely sleeps under load, and
    /// polling takes CPU time from the clients.
    pub poll_budget: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_nodes: 1000,
            max_node_size: 2048,
            max_watches: 128,
            max_transactions: 10,
            max_perms: 5,
            max_tx_nodes: 1024,
            max_path_len: xenshare::store::wire::REL_PATH_MAX,
            max_outstanding: 20,
            dom0_outstanding: 1024,
            max_memory: 2 * 1024 * 1024 + 512 * 1024,
            max_queued_bytes: 1024 * 1024,
            reply_headroom: 1024
                * (xenshare::store::wire::HEADER_LEN + xenshare::store::wire::PAYLOAD_MAX),
            poll_budget: std::time::Duration::from_micros(DEFAULT_POLL_BUDGET_US),
        }
    }
}
