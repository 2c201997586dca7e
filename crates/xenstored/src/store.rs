//! The daemon's state machine: node tree, connections, watches,
//! transactions, domains and quotas. No I/O: [`Store::handle`] takes one
//! request from a connection and returns what to send where, so any
//! transport (Unix socket, in-process, shared ring) can drive it.

use std::collections::{BTreeMap, HashMap};

use xenshare::store::path::{self, basename, canonicalize, is_child, join, parent};
use xenshare::store::perms::{Access, PermKind, Perms};
use xenshare::store::wire::{Message, MsgType, Request, DOMID_SELF, PAYLOAD_MAX, REL_PATH_MAX};
use xenshare::store::XsError;
use xenshare::DomId;

use crate::config::Config;
use crate::idmap::IdMap;

/// Identifies one client connection to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Something the transport layer must do after [`Store::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Queue `msg` to connection `conn`, in order.
    Send(ConnId, Message),
    /// Drop connection `conn` (its state is already gone from the store).
    Close(ConnId),
    /// A domain was introduced (or re-introduced): a ring transport would
    /// map its page and bind the event channel now.
    Introduced {
        /// The domain.
        domid: DomId,
        /// Frame of its xenstore page.
        gfn: i64,
        /// Its xenstore event channel.
        port: u32,
    },
    /// A domain was released: tear its ring transport down.
    Released(DomId),
}

const INTRODUCE: &str = "@introduceDomain";
const RELEASE: &str = "@releaseDomain";

#[derive(Debug, Clone)]
struct Node {
    value: Vec<u8>,
    perms: Perms,
    children: Vec<String>,
    /// Bumped on every change; transactions compare it at commit.
    gen: u64,
}

/// What a domain's nodes take: how many, and how many bytes (names, values,
/// permission entries), for the node and memory quotas.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Acc {
    nodes: i64,
    mem: i64,
}

/// Bytes one permission entry is charged for (a domid and a mode, as in C
/// xenstored's node layout).
const PERM_COST: usize = 8;

/// Bytes node `n` at `path` is charged to its owner.
fn cost(path: &str, n: &Node) -> i64 {
    (path.len() + n.value.len() + PERM_COST * n.perms.entries().len()) as i64
}

#[derive(Debug, Default)]
struct Tree {
    nodes: HashMap<String, Node>,
    gen: u64,
    /// What each domain owns, for the node and memory quotas.
    acc: IdMap<DomId, Acc>,
}

#[derive(Debug)]
struct TxEntry {
    /// The transaction's copy (None = absent / deleted).
    node: Option<Node>,
    /// Generation in the tree when first touched (None = was absent).
    base: Option<u64>,
    dirty: bool,
}

/// A pending watch firing: path, whether only exact watches match, and the
/// permissions that decide who may see it (any of them readable suffices).
#[derive(Debug, Clone)]
struct Fire {
    path: String,
    exact: bool,
    perms: Vec<Perms>,
}

#[derive(Debug, Default)]
struct Transaction {
    entries: HashMap<String, TxEntry>,
    fires: Vec<Fire>,
    acc_delta: IdMap<DomId, Acc>,
}

#[derive(Debug)]
struct Watch {
    /// Canonical path or special `@` name.
    path: String,
    token: Vec<u8>,
    /// For a watch given as a relative path: the prefix stripped from
    /// event paths.
    relative_base: Option<String>,
}

#[derive(Debug)]
struct Conn {
    domid: DomId,
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Transaction>,
    next_tx: u32,
}

#[derive(Debug, Default)]
struct Domain {
    introduced: bool,
    target: Option<DomId>,
    shutdown: bool,
}

/// Who is asking, for permission checks.
#[derive(Debug, Clone, Copy)]
struct Actor {
    domid: DomId,
    target: Option<DomId>,
}

impl Actor {
    fn privileged(self) -> bool {
        self.domid == DomId::DOM0
    }

    fn access(self, perms: &Perms) -> Access {
        perms.access_for(self.domid, self.target)
    }
}

const READ: Access = Access {
    read: true,
    write: false,
    owner: false,
};
const WRITE: Access = Access {
    read: false,
    write: true,
    owner: false,
};
const WRITE_OWNER: Access = Access {
    read: false,
    write: true,
    owner: true,
};

/// The node tree seen directly or through a transaction.
struct View<'a> {
    tree: &'a mut Tree,
    tx: Option<&'a mut Transaction>,
    /// Limit on nodes a transaction touches (None: unlimited).
    tx_limit: Option<usize>,
    /// Node and memory quotas of unprivileged owners, when the actor is
    /// unprivileged (None: unchecked).
    quota: Option<Acc>,
    /// Firings of a direct (non-transaction) change, in order.
    fires: Vec<Fire>,
}

impl View<'_> {
    fn get(&mut self, p: &str) -> Result<Option<Node>, XsError> {
        self.with(p, |n| n.cloned())
    }

    /// Calls `f` on node `p` as this view sees it (without copying it
    /// outside a transaction); inside one, the node is recorded as read,
    /// as [`View::get`] does.
    fn with<R>(&mut self, p: &str, f: impl FnOnce(Option<&Node>) -> R) -> Result<R, XsError> {
        let Some(tx) = self.tx.as_deref_mut() else {
            return Ok(f(self.tree.nodes.get(p)));
        };
        if let Some(e) = tx.entries.get(p) {
            return Ok(f(e.node.as_ref()));
        }
        if self.tx_limit.is_some_and(|l| tx.entries.len() >= l) {
            return Err(XsError::ENOSPC);
        }
        let node = self.tree.nodes.get(p).cloned();
        let r = f(node.as_ref());
        tx.entries.insert(
            p.to_owned(),
            TxEntry {
                base: node.as_ref().map(|n| n.gen),
                node,
                dirty: false,
            },
        );
        Ok(r)
    }

    fn adjust(&mut self, d: DomId, by: Acc) {
        let map = match self.tx.as_deref_mut() {
            Some(tx) => &mut tx.acc_delta,
            None => &mut self.tree.acc,
        };
        let a = map.entry(d).or_default();
        a.nodes += by.nodes;
        a.mem += by.mem;
    }

    /// What `d` owns as this view sees it.
    fn owned(&self, d: DomId) -> Acc {
        let base = self.tree.acc.get(&d).copied().unwrap_or_default();
        let delta = self
            .tx
            .as_deref()
            .and_then(|t| t.acc_delta.get(&d).copied())
            .unwrap_or_default();
        Acc {
            nodes: base.nodes + delta.nodes,
            mem: base.mem + delta.mem,
        }
    }

    /// Refuses a change that grows what `d` owns by `by` past the quota.
    fn check_quota(&self, d: DomId, by: Acc) -> Result<(), XsError> {
        let Some(q) = self.quota else {
            return Ok(());
        };
        if d == DomId::DOM0 {
            return Ok(());
        }
        let now = self.owned(d);
        if by.nodes > 0 && now.nodes + by.nodes > q.nodes {
            return Err(XsError::ENOSPC);
        }
        if by.mem > 0 && now.mem + by.mem > q.mem {
            return Err(XsError::ENOMEM);
        }
        Ok(())
    }

    fn set(&mut self, p: &str, node: Option<Node>) -> Result<(), XsError> {
        let old = self.with(p, |n| n.map(|n| (n.perms.owner(), cost(p, n))))?;
        let new = node.as_ref().map(|n| (n.perms.owner(), cost(p, n)));
        // What the new owner gains (net of what it had there already).
        if let Some((owner, c)) = new {
            let mut gain = Acc { nodes: 1, mem: c };
            if let Some((o, oc)) = old {
                if o == owner {
                    gain = Acc {
                        nodes: 0,
                        mem: c - oc,
                    };
                }
            }
            self.check_quota(owner, gain)?;
        }
        if let Some((o, oc)) = old {
            self.adjust(
                o,
                Acc {
                    nodes: -1,
                    mem: -oc,
                },
            );
        }
        if let Some((n, c)) = new {
            self.adjust(n, Acc { nodes: 1, mem: c });
        }
        match self.tx.as_deref_mut() {
            Some(tx) => {
                if let Some(e) = tx.entries.get_mut(p) {
                    e.node = node;
                    e.dirty = true;
                }
            }
            None => self.tree.store(p, node),
        }
        Ok(())
    }

    fn fire(&mut self, path: &str, exact: bool, perms: Vec<Perms>) {
        let f = Fire {
            path: path.to_owned(),
            exact,
            perms,
        };
        match self.tx.as_deref_mut() {
            // Changes inside a transaction fire only when it commits.
            Some(tx) => tx.fires.push(f),
            None => self.fires.push(f),
        }
    }
}

impl Tree {
    fn store(&mut self, p: &str, node: Option<Node>) {
        match node {
            Some(mut n) => {
                self.gen += 1;
                n.gen = self.gen;
                // An existing node keeps its key (no new string).
                match self.nodes.get_mut(p) {
                    Some(slot) => *slot = n,
                    None => {
                        self.nodes.insert(p.to_owned(), n);
                    }
                }
            }
            None => {
                self.nodes.remove(p);
            }
        }
    }

    fn initial() -> Tree {
        let mut t = Tree::default();
        let dom0 = || Perms::owned_by(DomId::DOM0, PermKind::None);
        let mk = |children: &[&str]| Node {
            value: Vec::new(),
            perms: dom0(),
            children: children.iter().map(|s| (*s).to_owned()).collect(),
            gen: 0,
        };
        // The nodes C xenstored creates at start-up.
        t.store("/", Some(mk(&["tool"])));
        t.store("/tool", Some(mk(&["xenstored"])));
        t.store("/tool/xenstored", Some(mk(&[])));
        let mem = ["/", "/tool", "/tool/xenstored"]
            .iter()
            .filter_map(|p| t.nodes.get(*p).map(|n| cost(p, n)))
            .sum();
        t.acc.insert(DomId::DOM0, Acc { nodes: 3, mem });
        t
    }
}

/// The daemon state.
pub struct Store {
    config: Config,
    tree: Tree,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    domains: IdMap<DomId, Domain>,
    special: HashMap<&'static str, Perms>,
    /// Every watch's path, with the connection holding it (once per
    /// watch): a firing looks up its path and its ancestors here instead
    /// of going through every connection's watches.
    watch_index: HashMap<String, Vec<ConnId>>,
    /// Per domain: its connections, watches and open transactions, for the
    /// quotas without going through every connection.
    per_dom: IdMap<DomId, DomCount>,
}

/// What one domain holds over all its connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DomCount {
    conns: usize,
    watches: usize,
    txs: usize,
}

fn oops(e: XsError) -> Result<Vec<u8>, XsError> {
    Err(e)
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Store {
    /// A store holding `/`, `/tool` and `/tool/xenstored`, owned by dom0.
    pub fn new(config: Config) -> Store {
        let special = [INTRODUCE, RELEASE]
            .into_iter()
            .map(|n| (n, Perms::owned_by(DomId::DOM0, PermKind::None)))
            .collect();
        Store {
            config,
            tree: Tree::initial(),
            conns: BTreeMap::new(),
            next_conn: 1,
            domains: IdMap::default(),
            special,
            watch_index: HashMap::new(),
            per_dom: IdMap::default(),
        }
    }

    fn count(&mut self, d: DomId) -> &mut DomCount {
        self.per_dom.entry(d).or_default()
    }

    fn forget_if_empty(&mut self, d: DomId) {
        if self.per_dom.get(&d) == Some(&DomCount::default()) {
            self.per_dom.remove(&d);
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers a connection from domain `domid`.
    pub fn connect(&mut self, domid: DomId) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                watches: Vec::new(),
                txs: BTreeMap::new(),
                next_tx: 1,
            },
        );
        self.count(domid).conns += 1;
        id
    }

    /// Forgets a connection: its watches and open transactions go.
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            for w in &c.watches {
                self.unindex(&w.path, conn);
            }
            let n = self.count(c.domid);
            n.conns -= 1;
            n.watches -= c.watches.len();
            n.txs -= c.txs.len();
            self.forget_if_empty(c.domid);
        }
    }

    fn unindex(&mut self, path: &str, conn: ConnId) {
        if let Some(v) = self.watch_index.get_mut(path) {
            if let Some(i) = v.iter().position(|c| *c == conn) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.watch_index.remove(path);
            }
        }
    }

    /// Connections with a watch on `path` or, unless `exact`, on one of
    /// its ancestors: sorted, each once.
    fn watchers(&self, path: &str, exact: bool, into: &mut Vec<ConnId>) {
        into.clear();
        let mut p = path;
        loop {
            if let Some(v) = self.watch_index.get(p) {
                into.extend_from_slice(v);
            }
            if exact || p == "/" || p.is_empty() {
                break;
            }
            p = parent(p);
        }
        into.sort_unstable();
        into.dedup();
    }

    /// The domain of a connection.
    pub fn conn_domid(&self, conn: ConnId) -> Option<DomId> {
        self.conns.get(&conn).map(|c| c.domid)
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of nodes in the tree.
    pub fn node_count(&self) -> usize {
        self.tree.nodes.len()
    }

    /// Handles one request from `conn` and returns what to send, in order.
    /// Requests from unknown connections are ignored.
    pub fn handle(&mut self, conn: ConnId, msg: Message) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(domid) = self.conn_domid(conn) else {
            return out;
        };
        if msg.payload.len() > PAYLOAD_MAX {
            // The framing is not trustworthy any more: drop, as C does.
            self.disconnect(conn);
            out.push(Output::Close(conn));
            return out;
        }
        let mut after = Vec::new();
        let reply = match self.dispatch(conn, domid, &msg, &mut out, &mut after) {
            Ok(p) if p.len() > PAYLOAD_MAX => Message::error(&msg, XsError::E2BIG),
            Ok(p) => Message::reply_to(&msg, p),
            Err(e) => Message::error(&msg, e),
        };
        if self.conns.contains_key(&conn) {
            out.push(Output::Send(conn, reply));
        }
        out.extend(after);
        out
    }

    fn actor(&self, domid: DomId) -> Actor {
        Actor {
            domid,
            target: self.domains.get(&domid).and_then(|d| d.target),
        }
    }

    fn dispatch(
        &mut self,
        conn: ConnId,
        domid: DomId,
        msg: &Message,
        out: &mut Vec<Output>,
        after: &mut Vec<Output>,
    ) -> Result<Vec<u8>, XsError> {
        use MsgType as T;
        let supported = !matches!(
            msg.ty,
            T::WatchEvent | T::Error | T::Restrict | T::Invalid | T::Other(_)
        ) && msg.ty.raw() < 23;
        if !supported {
            return oops(XsError::ENOSYS);
        }
        let privileged_only = matches!(
            msg.ty,
            T::Control
                | T::Introduce
                | T::Release
                | T::IsDomainIntroduced
                | T::Resume
                | T::SetTarget
        );
        if privileged_only && domid != DomId::DOM0 {
            return oops(XsError::EACCES);
        }
        // WATCH and UNWATCH ignore the transaction id.
        let tx_id = if matches!(msg.ty, T::Watch | T::Unwatch) {
            0
        } else {
            msg.tx_id
        };
        if tx_id != 0
            && !self
                .conns
                .get(&conn)
                .is_some_and(|c| c.txs.contains_key(&tx_id))
        {
            return oops(XsError::ENOENT);
        }
        let req = Request::parse(msg).map_err(|e| e.to_xs())?;
        let actor = self.actor(domid);
        match req {
            Request::TransactionStart => self.tx_start(conn, actor, tx_id),
            Request::TransactionEnd(commit) => self.tx_end(conn, tx_id, commit, out),
            Request::Watch { path, token } => self.watch(conn, actor, &path, token, after),
            Request::Unwatch { path, token } => self.unwatch(conn, domid, &path, &token),
            Request::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    let gone = std::mem::take(&mut c.watches);
                    let txs = std::mem::take(&mut c.txs).len();
                    let n = self.count(domid);
                    n.watches -= gone.len();
                    n.txs -= txs;
                    for w in gone {
                        self.unindex(&w.path, conn);
                    }
                }
                Ok(b"OK\0".to_vec())
            }
            Request::GetDomainPath(d) => Ok(nul_terminated(&path::domain_path(d))),
            Request::IsDomainIntroduced(d) => {
                let yes = d == DOMID_SELF
                    || u16::try_from(d).is_ok_and(|d| d == 0 || self.domain_known(DomId(d)));
                Ok(if yes { b"T\0" } else { b"F\0" }.to_vec())
            }
            Request::Introduce { domid, gfn, port } => self.introduce(domid, gfn, port, out),
            Request::Release(d) => self.release(d, out),
            Request::Resume(d) => {
                if d == DomId::DOM0 {
                    return oops(XsError::EINVAL);
                }
                if !self.domain_known(d) {
                    return oops(XsError::ENOENT);
                }
                self.domains.entry(d).or_default().shutdown = false;
                Ok(b"OK\0".to_vec())
            }
            Request::SetTarget { domid, target } => {
                if !self.domain_known(domid) || !self.domain_known(target) {
                    return oops(XsError::ENOENT);
                }
                self.domains.entry(domid).or_default().target = Some(target);
                Ok(b"OK\0".to_vec())
            }
            Request::Control(args) => self.control(&args),
            Request::SetPerms { path, perms } if path.starts_with('@') => {
                let name = match path.as_str() {
                    INTRODUCE => INTRODUCE,
                    RELEASE => RELEASE,
                    _ => return oops(XsError::EINVAL),
                };
                let cur = self.special.get(name).cloned();
                if !cur.is_some_and(|p| actor.access(&p).covers(WRITE_OWNER)) {
                    return oops(XsError::EACCES);
                }
                self.special.insert(name, perms);
                Ok(b"OK\0".to_vec())
            }
            other => self.node_op(conn, actor, tx_id, other, out),
        }
    }

    fn domain_known(&self, d: DomId) -> bool {
        self.domains.get(&d).is_some_and(|x| x.introduced)
            || self.per_dom.get(&d).is_some_and(|n| n.conns > 0)
    }

    /// Operations on the tree, directly or inside transaction `tx_id`.
    fn node_op(
        &mut self,
        conn: ConnId,
        actor: Actor,
        tx_id: u32,
        req: Request,
        out: &mut Vec<Output>,
    ) -> Result<Vec<u8>, XsError> {
        let cfg = self.config.clone();
        let max_path = cfg.max_path_len.min(REL_PATH_MAX);
        let canon = |p: &str| -> Result<String, XsError> {
            let c = canonicalize(actor.domid, p);
            path::validate_with(&c, max_path)?;
            Ok(c)
        };
        let tx = if tx_id == 0 {
            None
        } else {
            self.conns
                .get_mut(&conn)
                .and_then(|c| c.txs.get_mut(&tx_id))
        };
        let mut view = View {
            tree: &mut self.tree,
            tx,
            tx_limit: (!actor.privileged()).then_some(cfg.max_tx_nodes),
            quota: (!actor.privileged()).then_some(Acc {
                nodes: cfg.max_nodes as i64,
                mem: cfg.max_memory as i64,
            }),
            fires: Vec::new(),
        };
        let result = match req {
            Request::Read(p) => checked(&mut view, actor, &canon(&p)?, READ, |n| n.value.clone()),
            Request::GetPerms(p) => {
                checked(&mut view, actor, &canon(&p)?, READ, |n| n.perms.to_wire())
            }
            Request::Directory(p) => checked(&mut view, actor, &canon(&p)?, READ, children_bytes),
            Request::DirectoryPart { path, offset } => {
                checked(&mut view, actor, &canon(&path)?, READ, |n| {
                    directory_part(n, offset as usize)
                })
            }
            Request::Write { path, value } => {
                let p = canon(&path)?;
                if !actor.privileged() && value.len() > cfg.max_node_size {
                    return oops(XsError::ENOSPC);
                }
                match get_checked(&mut view, actor, &p, WRITE) {
                    Ok(mut n) => {
                        n.value = value;
                        let perms = n.perms.clone();
                        view.set(&p, Some(n))?;
                        view.fire(&p, false, vec![perms]);
                    }
                    Err(XsError::ENOENT) => {
                        let perms = create(&mut view, actor, &p, value)?;
                        view.fire(&p, false, vec![perms]);
                    }
                    Err(e) => return Err(e),
                }
                Ok(b"OK\0".to_vec())
            }
            Request::Mkdir(path) => {
                let p = canon(&path)?;
                match get_checked(&mut view, actor, &p, WRITE) {
                    Ok(_) => {}
                    Err(XsError::ENOENT) => {
                        let perms = create(&mut view, actor, &p, Vec::new())?;
                        view.fire(&p, false, vec![perms]);
                    }
                    Err(e) => return Err(e),
                }
                Ok(b"OK\0".to_vec())
            }
            Request::Rm(path) => {
                let p = canon(&path)?;
                match get_checked(&mut view, actor, &p, WRITE) {
                    Ok(_) if p == "/" => Err(XsError::EINVAL),
                    Ok(_) => remove(&mut view, &p).map(|()| b"OK\0".to_vec()),
                    Err(XsError::ENOENT) => match view.get(parent(&p))? {
                        Some(_) => Ok(b"OK\0".to_vec()),
                        None => Err(XsError::ENOENT),
                    },
                    Err(e) => Err(e),
                }
            }
            Request::SetPerms { path, perms } => {
                let p = canon(&path)?;
                if !actor.privileged() && perms.entries().len() > cfg.max_perms {
                    return oops(XsError::ENOSPC);
                }
                let mut n = get_checked(&mut view, actor, &p, WRITE_OWNER)?;
                if !actor.privileged() && perms.owner() != n.perms.owner() {
                    return oops(XsError::EPERM);
                }
                let old = core::mem::replace(&mut n.perms, perms.clone());
                view.set(&p, Some(n))?;
                view.fire(&p, false, vec![old, perms]);
                Ok(b"OK\0".to_vec())
            }
            _ => Err(XsError::ENOSYS),
        };
        let fires = core::mem::take(&mut view.fires);
        drop(view);
        if result.is_ok() {
            self.fire(&fires, out);
        }
        result
    }

    fn tx_start(&mut self, conn: ConnId, actor: Actor, tx_id: u32) -> Result<Vec<u8>, XsError> {
        if tx_id != 0 {
            return oops(XsError::EBUSY);
        }
        if !actor.privileged() {
            let open = self.per_dom.get(&actor.domid).map_or(0, |n| n.txs);
            if open >= self.config.max_transactions {
                return oops(XsError::ENOSPC);
            }
        }
        let c = self.conns.get_mut(&conn).ok_or(XsError::EINVAL)?;
        let mut id = c.next_tx;
        while id == 0 || c.txs.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        c.next_tx = id.wrapping_add(1);
        c.txs.insert(id, Transaction::default());
        let d = c.domid;
        self.count(d).txs += 1;
        Ok(nul_terminated(&id.to_string()))
    }

    fn tx_end(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        commit: bool,
        out: &mut Vec<Output>,
    ) -> Result<Vec<u8>, XsError> {
        if tx_id == 0 {
            return oops(XsError::ENOENT);
        }
        let (d, tx) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| Some((c.domid, c.txs.remove(&tx_id)?)))
            .ok_or(XsError::ENOENT)?;
        self.count(d).txs -= 1;
        if !commit {
            return Ok(b"OK\0".to_vec());
        }
        // Anything read or written that changed since: redo from scratch.
        let conflict = tx
            .entries
            .iter()
            .any(|(p, e)| self.tree.nodes.get(p).map(|n| n.gen) != e.base);
        if conflict {
            return oops(XsError::EAGAIN);
        }
        // The quotas were checked against the tree as it was during the
        // transaction; other commits may have filled them since (XSA-421
        // class). Check again against the tree as it is now.
        let privileged = self.conn_domid(conn) == Some(DomId::DOM0);
        if !privileged {
            for (d, delta) in &tx.acc_delta {
                if *d == DomId::DOM0 {
                    continue;
                }
                let now = self.tree.acc.get(d).copied().unwrap_or_default();
                if delta.nodes > 0 && now.nodes + delta.nodes > self.config.max_nodes as i64 {
                    return oops(XsError::ENOSPC);
                }
                if delta.mem > 0 && now.mem + delta.mem > self.config.max_memory as i64 {
                    return oops(XsError::ENOMEM);
                }
            }
        }
        let mut dirty: Vec<(String, Option<Node>)> = tx
            .entries
            .into_iter()
            .filter(|(_, e)| e.dirty)
            .map(|(p, e)| (p, e.node))
            .collect();
        dirty.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, n) in dirty {
            self.tree.store(&p, n);
        }
        for (d, delta) in tx.acc_delta {
            let a = self.tree.acc.entry(d).or_default();
            a.nodes += delta.nodes;
            a.mem += delta.mem;
        }
        self.fire(&tx.fires, out);
        Ok(b"OK\0".to_vec())
    }

    fn watch(
        &mut self,
        conn: ConnId,
        actor: Actor,
        path: &str,
        token: Vec<u8>,
        after: &mut Vec<Output>,
    ) -> Result<Vec<u8>, XsError> {
        let (canonical, relative_base) = if path.starts_with('@') {
            if path.len() > REL_PATH_MAX {
                return oops(XsError::EINVAL);
            }
            (path.to_owned(), None)
        } else {
            let c = canonicalize(actor.domid, path);
            path::validate_with(&c, self.config.max_path_len.min(REL_PATH_MAX))?;
            let rel = (!path.starts_with('/')).then(|| path::domain_path(actor.domid));
            (c, rel)
        };
        let domain_watches = self.per_dom.get(&actor.domid).map_or(0, |n| n.watches);
        let c = self.conns.get_mut(&conn).ok_or(XsError::EINVAL)?;
        if c.watches
            .iter()
            .any(|w| w.path == canonical && w.token == token)
        {
            return oops(XsError::EEXIST);
        }
        if !actor.privileged() && domain_watches >= self.config.max_watches {
            return oops(XsError::E2BIG);
        }
        let w = Watch {
            path: canonical,
            token,
            relative_base,
        };
        // Fired once up front, after the reply.
        after.push(Output::Send(
            conn,
            Message::watch_event(&event_path(&w, &w.path), &w.token),
        ));
        let (d, path) = (c.domid, w.path.clone());
        c.watches.push(w);
        self.watch_index.entry(path).or_default().push(conn);
        self.count(d).watches += 1;
        Ok(b"OK\0".to_vec())
    }

    fn unwatch(
        &mut self,
        conn: ConnId,
        domid: DomId,
        path: &str,
        token: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        let canonical = canonicalize(domid, path);
        let c = self.conns.get_mut(&conn).ok_or(XsError::EINVAL)?;
        let i = c
            .watches
            .iter()
            .position(|w| w.path == canonical && w.token == token)
            .ok_or(XsError::ENOENT)?;
        c.watches.remove(i);
        let d = c.domid;
        self.count(d).watches -= 1;
        self.unindex(&canonical, conn);
        Ok(b"OK\0".to_vec())
    }

    fn introduce(
        &mut self,
        domid: DomId,
        gfn: i64,
        port: u32,
        out: &mut Vec<Output>,
    ) -> Result<Vec<u8>, XsError> {
        if port == 0 {
            return oops(XsError::EINVAL);
        }
        let d = self.domains.entry(domid).or_default();
        let fresh = !d.introduced;
        d.introduced = true;
        if fresh && domid != DomId::DOM0 {
            self.fire_special(INTRODUCE, out);
        }
        out.push(Output::Introduced { domid, gfn, port });
        Ok(b"OK\0".to_vec())
    }

    /// Introduces `domid` for a transport that has no shared ring (a
    /// domain that reaches the daemon over its own socket): it becomes
    /// known and `@introduceDomain` fires, as on `XS_INTRODUCE`.
    pub fn introduce_domain(&mut self, domid: DomId) -> Result<Vec<Output>, XsError> {
        if domid == DomId::DOM0 {
            return Err(XsError::EINVAL);
        }
        let mut out = Vec::new();
        let d = self.domains.entry(domid).or_default();
        if !d.introduced {
            d.introduced = true;
            self.fire_special(INTRODUCE, &mut out);
        }
        Ok(out)
    }

    /// Releases `domid` as `XS_RELEASE` does: its connections are closed
    /// and `@releaseDomain` fires.
    pub fn release_domain(&mut self, domid: DomId) -> Result<Vec<Output>, XsError> {
        let mut out = Vec::new();
        self.release(domid, &mut out)?;
        Ok(out)
    }

    fn release(&mut self, domid: DomId, out: &mut Vec<Output>) -> Result<Vec<u8>, XsError> {
        if domid == DomId::DOM0 {
            return oops(XsError::EINVAL);
        }
        if !self.domain_known(domid) {
            return oops(XsError::ENOENT);
        }
        self.domains.remove(&domid);
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.disconnect(id);
            out.push(Output::Close(id));
        }
        out.push(Output::Released(domid));
        self.fire_special(RELEASE, out);
        Ok(b"OK\0".to_vec())
    }

    fn control(&mut self, args: &[Vec<u8>]) -> Result<Vec<u8>, XsError> {
        let Some(cmd) = args.first() else {
            return oops(XsError::EINVAL);
        };
        let text = |a: &[Vec<u8>]| {
            a.iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        match cmd.as_slice() {
            b"print" => {
                // `xenstore-control print`: a client's line in the daemon's log.
                tracing::info!(target: "xenstored", "{}", text(&args[1..]));
                Ok(b"OK\0".to_vec())
            }
            // There is no trace log to switch; accepted for compatibility.
            b"log" => Ok(b"OK\0".to_vec()),
            b"help" => Ok(nul_terminated("help\nlog [on|off]\nprint <text>\nquota\n")),
            b"quota" => {
                let c = &self.config;
                Ok(nul_terminated(&format!(
                    "nodes {}\nnode-size {}\nwatches {}\ntransactions {}\npermissions {}\ntransaction-nodes {}\noutstanding {}\npath-max {}\nmemory {}\n",
                    c.max_nodes, c.max_node_size, c.max_watches, c.max_transactions,
                    c.max_perms, c.max_tx_nodes, c.max_outstanding, c.max_path_len,
                    c.max_memory
                )))
            }
            _ => oops(XsError::EINVAL),
        }
    }

    fn fire_special(&self, name: &str, out: &mut Vec<Output>) {
        let Some(perms) = self.special.get(name) else {
            return;
        };
        let mut ids = Vec::new();
        self.watchers(name, true, &mut ids);
        for id in &ids {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            if !self.actor(c.domid).access(perms).read {
                continue;
            }
            for w in c.watches.iter().filter(|w| w.path == name) {
                out.push(Output::Send(*id, Message::watch_event(name, &w.token)));
            }
        }
    }

    /// Delivers firings to every watch that matches and may see them.
    fn fire(&self, fires: &[Fire], out: &mut Vec<Output>) {
        let mut ids = Vec::new();
        for f in fires {
            // In connection order, as if every connection were looked at.
            self.watchers(&f.path, f.exact, &mut ids);
            for id in &ids {
                let Some(c) = self.conns.get(id) else {
                    continue;
                };
                let actor = self.actor(c.domid);
                let visible = f.perms.iter().any(|p| actor.access(p).read)
                    || self
                        .tree
                        .nodes
                        .get(parent(&f.path))
                        .is_some_and(|n| actor.access(&n.perms).read);
                if !visible {
                    continue;
                }
                for w in &c.watches {
                    let hit = if f.exact {
                        w.path == f.path
                    } else {
                        !w.path.starts_with('@') && is_child(&f.path, &w.path)
                    };
                    if hit {
                        out.push(Output::Send(
                            *id,
                            Message::watch_event(&event_path(w, &f.path), &w.token),
                        ));
                    }
                }
            }
        }
    }
}

/// The path an event reports: relative watches see paths relative to their
/// domain's home.
fn event_path(w: &Watch, p: &str) -> String {
    match &w.relative_base {
        Some(base) => {
            let rest = p.strip_prefix(base.as_str()).unwrap_or(p);
            rest.strip_prefix('/').unwrap_or(rest).to_owned()
        }
        None => p.to_owned(),
    }
}

/// Looks a node up for `need` access. A missing node is `ENOENT` only if the
/// nearest existing ancestor grants some of `need`; otherwise `EACCES`, so
/// the error does not reveal what the caller may not see.
fn get_checked(view: &mut View<'_>, actor: Actor, p: &str, need: Access) -> Result<Node, XsError> {
    checked(view, actor, p, need, Node::clone)
}

/// [`get_checked`], calling `f` on the node in place instead of copying it
/// (a read needs its value only, not its children and permissions).
fn checked<R>(
    view: &mut View<'_>,
    actor: Actor,
    p: &str,
    need: Access,
    f: impl FnOnce(&Node) -> R,
) -> Result<R, XsError> {
    let found = view.with(p, |n| {
        n.map(|n| {
            if actor.access(&n.perms).covers(need) {
                Ok(f(n))
            } else {
                Err(XsError::EACCES)
            }
        })
    })?;
    if let Some(r) = found {
        return r;
    }
    let mut cur = p;
    loop {
        cur = parent(cur);
        let seen = view.with(cur, |n| n.map(|n| actor.access(&n.perms).any_of(need)))?;
        if let Some(any) = seen {
            return if any {
                Err(XsError::ENOENT)
            } else {
                Err(XsError::EACCES)
            };
        }
        if cur == "/" {
            return Err(XsError::EACCES);
        }
    }
}

/// Creates `p` and any missing parents. New nodes inherit their parent's
/// permissions; a guest becomes the owner of what it creates. Returns the
/// new node's permissions.
fn create(view: &mut View<'_>, actor: Actor, p: &str, value: Vec<u8>) -> Result<Perms, XsError> {
    let mut missing = vec![p.to_owned()];
    let mut top = parent(p).to_owned();
    let mut parent_node = loop {
        if let Some(n) = view.get(&top)? {
            break n;
        }
        if top == "/" {
            return Err(XsError::EIO);
        }
        missing.push(top.clone());
        top = parent(&top).to_owned();
    };
    if !actor.privileged() {
        // Checked up front for all the new nodes together, so a refused
        // create changes nothing.
        let perms = parent_node.perms.entries().len().max(1);
        let mem: usize = missing
            .iter()
            .map(|m| m.len() + PERM_COST * perms)
            .sum::<usize>()
            + value.len();
        view.check_quota(
            actor.domid,
            Acc {
                nodes: missing.len() as i64,
                mem: mem as i64,
            },
        )?;
    }
    let mut parent_path = top;
    let mut value = Some(value);
    for name in missing.iter().rev() {
        parent_node.children.push(basename(name).to_owned());
        let mut perms = parent_node.perms.clone();
        if !actor.privileged() {
            perms.set_owner(actor.domid);
        }
        view.set(&parent_path, Some(parent_node))?;
        let v = if name == p {
            value.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        parent_node = Node {
            value: v,
            perms,
            children: Vec::new(),
            gen: 0,
        };
        parent_path = name.clone();
    }
    let perms = parent_node.perms.clone();
    view.set(p, Some(parent_node))?;
    Ok(perms)
}

/// Removes `p` and its subtree, firing watches for every removed node while
/// their permissions are still known.
fn remove(view: &mut View<'_>, p: &str) -> Result<(), XsError> {
    let mut order = Vec::new();
    let mut stack = vec![p.to_owned()];
    while let Some(cur) = stack.pop() {
        if let Some(n) = view.get(&cur)? {
            for c in &n.children {
                stack.push(join(&cur, c));
            }
            order.push((cur, n.perms));
        }
    }
    for (cur, perms) in order.into_iter().rev() {
        let exact = cur != p;
        view.fire(&cur, exact, vec![perms]);
        view.set(&cur, None)?;
    }
    let pp = parent(p).to_owned();
    if let Some(mut par) = view.get(&pp)? {
        let name = basename(p);
        par.children.retain(|c| c != name);
        view.set(&pp, Some(par))?;
    }
    Ok(())
}

fn children_bytes(n: &Node) -> Vec<u8> {
    let mut v = Vec::new();
    for c in &n.children {
        v.extend_from_slice(c.as_bytes());
        v.push(0);
    }
    v
}

/// DIRECTORY_PART: `<generation>\0` then as many children from byte
/// `offset` of the child list as fit; an extra `\0` marks the end.
fn directory_part(n: &Node, offset: usize) -> Vec<u8> {
    let all = children_bytes(n);
    let mut out = nul_terminated(&n.gen.to_string());
    if offset >= all.len() {
        out.push(0);
        return out;
    }
    let room = PAYLOAD_MAX - out.len() - 1;
    let mut end = offset;
    for piece in all[offset..].split_inclusive(|&b| b == 0) {
        if end - offset + piece.len() > room {
            break;
        }
        end += piece.len();
    }
    out.extend_from_slice(&all[offset..end]);
    if end == all.len() {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod watch_index_tests {
    use super::*;
    use proptest::prelude::*;

    const PATHS: [&str; 8] = [
        "/",
        "/a",
        "/a/b",
        "/a/b/c",
        "/ab",
        "@introduceDomain",
        "data/k",
        "/local/domain/5/data/k",
    ];

    #[derive(Debug, Clone)]
    enum Op {
        Watch(usize, usize, u8),
        Unwatch(usize, usize, u8),
        Reset(usize),
        Reconnect(usize),
        TxStart(usize),
        TxEnd(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 0..PATHS.len(), 0..2u8).prop_map(|(c, p, t)| Op::Watch(c, p, t)),
            2 => (0..3usize, 0..PATHS.len(), 0..2u8).prop_map(|(c, p, t)| Op::Unwatch(c, p, t)),
            1 => (0..3usize).prop_map(Op::Reset),
            1 => (0..3usize).prop_map(Op::Reconnect),
            2 => (0..3usize).prop_map(Op::TxStart),
            2 => (0..3usize, 1..4u32).prop_map(|(c, t)| Op::TxEnd(c, t)),
        ]
    }

    /// The per-domain counts are those of the connections, the index
    /// holds exactly the connections' watches, and the
    /// connections it names for a path are exactly those a scan of every
    /// connection's watches finds.
    fn check(s: &Store) {
        let mut rebuilt: HashMap<String, Vec<ConnId>> = HashMap::new();
        for (id, c) in &s.conns {
            for w in &c.watches {
                rebuilt.entry(w.path.clone()).or_default().push(*id);
            }
        }
        let mut index = s.watch_index.clone();
        for v in rebuilt.values_mut().chain(index.values_mut()) {
            v.sort();
        }
        assert_eq!(index, rebuilt);
        let mut counts: IdMap<DomId, DomCount> = IdMap::default();
        for c in s.conns.values() {
            let n = counts.entry(c.domid).or_default();
            n.conns += 1;
            n.watches += c.watches.len();
            n.txs += c.txs.len();
        }
        assert_eq!(s.per_dom, counts);
        let probes = ["/", "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/ab", "/x"];
        for p in probes.iter().copied().chain(["/local/domain/5/data/k/z"]) {
            for exact in [false, true] {
                let mut got = Vec::new();
                s.watchers(p, exact, &mut got);
                let want: Vec<ConnId> = s
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.watches.iter().any(|w| {
                            if exact {
                                w.path == p
                            } else {
                                !w.path.starts_with('@') && is_child(p, &w.path)
                            }
                        })
                    })
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(got, want, "{p} exact={exact}");
            }
        }
        let mut got = Vec::new();
        s.watchers(INTRODUCE, true, &mut got);
        let want: Vec<ConnId> = s
            .conns
            .iter()
            .filter(|(_, c)| c.watches.iter().any(|w| w.path == INTRODUCE))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(got, want);
    }

    proptest! {
        #[test]
        fn watch_index_and_counts_match_a_scan_of_every_connection(ops in proptest::collection::vec(op(), 0..60)) {
            let mut s = Store::new(Config::default());
            let doms = [DomId(0), DomId(0), DomId(5)];
            let mut conns: Vec<ConnId> = doms.iter().map(|d| s.connect(*d)).collect();
            for (i, o) in ops.into_iter().enumerate() {
                let id = i as u32 + 1;
                match o {
                    Op::Watch(c, p, t) => {
                        let m = Request::Watch { path: PATHS[p].into(), token: vec![t] }.to_message(id, 0);
                        s.handle(conns[c], m);
                    }
                    Op::Unwatch(c, p, t) => {
                        let m = Request::Unwatch { path: PATHS[p].into(), token: vec![t] }.to_message(id, 0);
                        s.handle(conns[c], m);
                    }
                    Op::Reset(c) => {
                        s.handle(conns[c], Request::ResetWatches.to_message(id, 0));
                    }
                    Op::Reconnect(c) => {
                        s.disconnect(conns[c]);
                        conns[c] = s.connect(doms[c]);
                    }
                    Op::TxStart(c) => {
                        s.handle(conns[c], Request::TransactionStart.to_message(id, 0));
                    }
                    Op::TxEnd(c, t) => {
                        s.handle(conns[c], Request::TransactionEnd(false).to_message(id, t));
                    }
                }
                check(&s);
            }
        }
    }
}
