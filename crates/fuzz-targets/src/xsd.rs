//! xenstored fed raw bytes from one connection, as its socket and ring
//! transports feed it ([`Daemon::deliver_bytes`]).
//!
//! The first input byte picks the connection's domain (dom0 or a guest that
//! owns `/local/domain/5`); the rest is cut into reads by the next bytes.
//!
//! Invariants:
//! * every whole request gets exactly one reply, in order, with its
//!   `req_id`, of its own type or `XS_ERROR`; everything else sent is a
//!   well-formed `XS_WATCH_EVENT`; every message sent encodes (payload at
//!   most 4096 bytes);
//! * the decoder never buffers a whole message it did not deliver;
//! * an unprivileged guest never owns more nodes than its quota, and a
//!   length over 4096 ends the stream with an error (the transport drops
//!   the connection) instead of desynchronising it;
//! * disconnecting forgets the connection.

use xenshare::store::perms::{PermKind, Perms};
use xenshare::store::wire::{
    Decoder, Message, MsgType, Request, WatchEvent, HEADER_LEN, PAYLOAD_MAX,
};
use xenshare::DomId;
use xenshare_xenstored::{Config, Daemon};

use crate::input::Input;

const GUEST: DomId = DomId(5);
const NODE_QUOTA: usize = 40;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let config = Config {
        max_nodes: NODE_QUOTA,
        max_watches: 16,
        max_transactions: 4,
        ..Config::default()
    };
    let daemon = Daemon::new(config);
    let admin = daemon.connect(DomId::DOM0);
    let home = format!("/local/domain/{}", GUEST.0);
    for req in [
        Request::Mkdir(home.clone()),
        Request::SetPerms {
            path: home,
            perms: Perms::owned_by(GUEST, PermKind::None),
        },
    ] {
        daemon.deliver(admin.id, req.to_message(1, 0));
    }
    assert!(admin
        .queue
        .take_all()
        .is_ok_and(|v| v.len() == 2 && v.iter().all(|m| m.ty != MsgType::Error)));
    daemon.disconnect(admin.id);
    let base_nodes = daemon.with_store(|s| s.node_count());

    let domid = if input.u8() & 1 == 0 {
        DomId::DOM0
    } else {
        GUEST
    };
    let conn = daemon.connect(domid);
    let mut dec = Decoder::new();
    let mut reqs = Decoder::new(); // a second, independent view of the requests
    while !input.is_empty() {
        let n = usize::from(input.clone().u8()) * 4 + 1;
        let chunk = input.bytes(n);
        let delivered = daemon.deliver_bytes(conn.id, &mut dec, chunk);
        reqs.push(chunk);
        let mut sent_reqs = Vec::new();
        while let Ok(Some(m)) = reqs.next_message() {
            sent_reqs.push(m);
        }
        let Ok(out) = conn.queue.take_all() else {
            // Closed by the daemon (it dropped a connection that piled up
            // too much); nothing more to check.
            break;
        };
        check_replies(&sent_reqs, &out);
        match delivered {
            Ok(n) => assert_eq!(n, sent_reqs.len()),
            // Lost framing: the transport drops the connection.
            Err(_) => break,
        }
        assert!(dec.buffered() < HEADER_LEN + PAYLOAD_MAX);
        if domid == GUEST {
            let nodes = daemon.with_store(|s| s.node_count());
            assert!(
                nodes <= base_nodes + NODE_QUOTA,
                "guest owns {nodes} nodes, quota {NODE_QUOTA} over {base_nodes}"
            );
        }
    }
    daemon.disconnect(conn.id);
    assert_eq!(daemon.with_store(|s| s.connection_count()), 0);
}

fn check_replies(reqs: &[Message], out: &[Message]) {
    let mut replies = Vec::new();
    for m in out {
        let mut bytes = Vec::new();
        m.encode_into(&mut bytes).expect("a sent message encodes");
        if m.ty == MsgType::WatchEvent && m.req_id == 0 {
            if let Err(e) = WatchEvent::parse(m) {
                panic!("malformed watch event {m:?}: {e:?}");
            }
        } else {
            replies.push(m);
        }
    }
    assert_eq!(
        replies.len(),
        reqs.len(),
        "{} replies to {} requests",
        replies.len(),
        reqs.len()
    );
    for (req, rep) in reqs.iter().zip(replies) {
        assert_eq!(rep.req_id, req.req_id, "reply out of order");
        assert!(
            rep.ty == req.ty || rep.ty == MsgType::Error,
            "reply type {:?} to a {:?}",
            rep.ty,
            req.ty
        );
        if rep.ty == MsgType::Error {
            assert!(rep.as_error().is_some());
        }
    }
}
