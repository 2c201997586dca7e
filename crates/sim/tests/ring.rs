//! A shared ring between two emulated domains.
//!
//! The front domain grants the ring pages and initialises the ring; the back
//! domain maps them. Requests and responses flow between two threads, woken
//! only by event channel notifications (with Xen's hold-off: a side notifies
//! only when the other asked). A lost wake-up shows up as a wait timing out.
//! Then a malicious back end: an overflowing producer index and a forged
//! response id each break the front end's ring with a typed error, and the
//! front end's pages stay granted while the back end still maps them.

use std::sync::Arc;
use std::time::Duration;
use xenshare_testkit::adversary::RawIndices;
use xenshare_testkit::two_domains;

use xenshare::event::Channel;
use xenshare::mem::SharedMem;
use xenshare::ring::{ring_bytes, BackRing, FrontRing, Outstanding, RingError};
use xenshare::Access;
use xenshare_sim::SimEvtchn;

/// A blkif-like request on the wire: id, opcode, sector, length.
///
/// Plain `u64` words (any `zerocopy` type would do; this crate does not
/// depend on zerocopy's derives).
type Req = [u64; 4];

/// A blkif-like response on the wire: id, then opcode | status << 8 | sum << 32.
type Rsp = [u64; 2];

fn request(id: u64, op: u8, sector: u64, len: u64) -> Req {
    [id, op.into(), sector, len]
}

/// The response's opcode, status and checksum.
fn fields(rsp: &Rsp) -> (u8, i16, u32) {
    (
        rsp[1] as u8,
        (rsp[1] >> 8) as u16 as i16,
        (rsp[1] >> 32) as u32,
    )
}

fn response(id: u64, op: u8, status: i16, sum: u32) -> Rsp {
    [
        id,
        u64::from(op) | u64::from(status as u16) << 8 | u64::from(sum) << 32,
    ]
}

const OP_READ: u8 = 0;
const OP_WRITE: u8 = 1;
const OP_STOP: u8 = 9;

/// What an honest back end computes from a request, so the front end can
/// tell its answer is to the request it sent.
fn digest(sector: u64, len: u64) -> u32 {
    (sector as u32).wrapping_mul(31) ^ len as u32
}

/// How long a side waits for an event before calling it a lost wake-up.
const WAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn wait(chan: &Channel<SimEvtchn>) {
    let got = chan.wait(Some(WAKE_TIMEOUT)).unwrap();
    assert_eq!(
        got,
        Some(chan.port()),
        "no event within {WAKE_TIMEOUT:?}: lost wake-up"
    );
    chan.unmask().unwrap();
}

/// The honest back end: answers every request until `OP_STOP`; returns how
/// many requests it served and how many notifications it sent.
fn serve(mut ring: BackRing<SharedMem<'_>, Req, Rsp>, chan: &Channel<SimEvtchn>) -> (u64, u64) {
    let (mut served, mut notifies) = (0u64, 0u64);
    loop {
        let mut stop = false;
        while let Some([id, op, sector, len]) = ring.next_request().unwrap() {
            // The request is our private copy: validate, then use only it.
            let (op, status) = match u8::try_from(op) {
                Ok(op @ (OP_READ | OP_WRITE | OP_STOP)) => (op, 0),
                _ => (u8::MAX, -1),
            };
            stop |= op == OP_STOP;
            ring.push_response(&response(id, op, status, digest(sector, len)))
                .unwrap();
            served += 1;
        }
        if ring.push_responses_and_check_notify().unwrap() {
            chan.notify().unwrap();
            notifies += 1;
        }
        if stop {
            return (served, notifies);
        }
        if !ring.final_check_for_requests().unwrap() {
            wait(chan);
        }
    }
}

/// Runs `ops` requests from a front domain to a back domain over a ring of
/// order `order`.
fn round_trip(order: u32, ops: u64) {
    let (_hv, front_dom, back_dom) = two_domains();

    // Front: grant the pages, initialise the ring, open a port. (Xenstore
    // would carry the refs and port; here the test hands them over.)
    let pages = 1usize << order;
    let share = front_dom
        .exporter()
        .share(back_dom.id(), pages, Access::ReadWrite)
        .unwrap();
    assert_eq!(share.mem().len(), ring_bytes(order));
    let mut front = FrontRing::<_, Req, Rsp>::init(share.mem()).unwrap();
    let fe: Arc<SimEvtchn> = front_dom.evtchn().unwrap();
    let fchan = Channel::alloc_unbound(&fe, back_dom.id()).unwrap();

    // Back: map the ring, bind to the port.
    let mapping = back_dom
        .importer()
        .map_rw(front_dom.id(), share.refs())
        .unwrap();
    let back = BackRing::<_, Req, Rsp>::attach(mapping.mem()).unwrap();
    assert_eq!(back.size(), front.size());
    let be = back_dom.evtchn().unwrap();
    let bchan = Channel::bind(&be, front_dom.id(), fchan.port()).unwrap();
    // Binding leaves the new port pending, as on Xen; start from a clean slate.
    wait(&bchan);

    let mut inflight = Outstanding::<(u64, u64)>::new(front.size() as usize);
    let (served, back_notifies) = std::thread::scope(|s| {
        let server = s.spawn(|| serve(back, &bchan));

        let (mut sent, mut done, mut front_notifies) = (0u64, 0u64, 0u64);
        let mut stopping = false;
        loop {
            // Fill the ring (in uneven batches), then publish.
            let batch = 1 + sent % 7;
            let mut pushed = 0;
            while pushed < batch && sent <= ops && !front.is_full() {
                let (op, sector, len) = if sent == ops {
                    (OP_STOP, 0, 0)
                } else {
                    let op = if sent % 3 == 0 { OP_WRITE } else { OP_READ };
                    (op, sent * 8, 512 + sent % 4096)
                };
                let id = inflight.start(op.into(), (sector, len)).unwrap();
                front.push_request(&request(id, op, sector, len)).unwrap();
                sent += 1;
                pushed += 1;
                stopping |= op == OP_STOP;
            }
            if front.push_requests_and_check_notify().unwrap() {
                fchan.notify().unwrap();
                front_notifies += 1;
            }

            // Take every response, each checked against what was sent.
            let mut progress = false;
            while let Some(rsp) = front.next_response().unwrap() {
                let (op, status, sum) = fields(&rsp);
                let (sector, len) = front.complete(&mut inflight, rsp[0], op.into()).unwrap();
                assert_eq!(status, 0);
                assert_eq!(sum, digest(sector, len));
                done += 1;
                progress = true;
            }
            if stopping && done == sent {
                break;
            }
            let can_send = sent <= ops && !front.is_full();
            if !progress && !can_send && !front.final_check_for_responses().unwrap() {
                wait(&fchan);
            }
        }
        assert_eq!(inflight.in_flight(), 0);
        let (served, back_notifies) = server.join().unwrap();
        assert_eq!(served, done);
        // Hold-off: far fewer events than requests and responses.
        assert!(front_notifies <= done && back_notifies <= done);
        (served, back_notifies)
    });
    assert_eq!(served, ops + 1);
    assert!(back_notifies >= 1);
    assert!(!front.is_broken());
    // Honest teardown: the back end unmaps, the front end gets its pages back.
    drop(mapping);
    assert!(share.try_unshare().is_ok());
}

#[test]
fn requests_and_responses_flow_between_domains() {
    round_trip(0, 5000);
}

#[test]
fn multi_page_ring() {
    round_trip(2, 3000);
}

#[test]
fn malicious_back_end_breaks_the_ring_not_the_front_end() {
    let (_hv, front_dom, back_dom) = two_domains();
    let share = front_dom
        .exporter()
        .share(back_dom.id(), 1, Access::ReadWrite)
        .unwrap();
    let mapping = back_dom
        .importer()
        .map_rw(front_dom.id(), share.refs())
        .unwrap();
    let peer = RawIndices::new(mapping.mem());

    let send =
        |front: &mut FrontRing<SharedMem<'_>, Req, Rsp>, inflight: &mut Outstanding, n: u64| {
            for i in 0..n {
                let id = inflight.start(OP_READ.into(), ()).unwrap();
                front.push_request(&request(id, OP_READ, i, 512)).unwrap();
            }
            front.push_requests_and_check_notify().unwrap();
        };

    // The back end claims a ring and a half of responses.
    let mut front = FrontRing::<_, Req, Rsp>::init(share.mem()).unwrap();
    let mut inflight = Outstanding::new(front.size() as usize);
    send(&mut front, &mut inflight, 4);
    peer.set_rsp_prod(front.size() * 3 / 2);
    let err = front.next_response().unwrap_err();
    assert!(
        matches!(err, RingError::ProducerOverflow { max: 4, .. }),
        "{err}"
    );
    assert_eq!(front.error(), Some(err));
    assert_eq!(front.final_check_for_responses(), Err(RingError::Broken));
    assert_eq!(front.push_requests(), Err(RingError::Broken));

    // The back end answers twice for one request, through the real back
    // ring API (a peer can of course write any bytes it likes).
    let mut front = FrontRing::<_, Req, Rsp>::init(share.mem()).unwrap();
    let mut inflight = Outstanding::new(front.size() as usize);
    let mut back = BackRing::<_, Req, Rsp>::attach(mapping.mem()).unwrap();
    send(&mut front, &mut inflight, 2);
    let [first, ..] = back.next_request().unwrap().unwrap();
    back.next_request().unwrap().unwrap();
    let forged = response(first, OP_READ, 0, 0);
    back.push_response(&forged).unwrap();
    back.push_response(&forged).unwrap();
    back.push_responses_and_check_notify().unwrap();
    let r = front.next_response().unwrap().unwrap();
    front
        .complete(&mut inflight, r[0], fields(&r).0.into())
        .unwrap();
    let r = front.next_response().unwrap().unwrap();
    assert_eq!(
        front.complete(&mut inflight, r[0], fields(&r).0.into()),
        Err(RingError::NotOutstanding { id: first })
    );
    assert!(front.is_broken() && inflight.is_broken());
    // The request never answered is handed back for teardown.
    assert_eq!(inflight.drain().len(), 1);

    // Tearing down: the pages stay granted while the back end maps them.
    let share = match share.try_unshare() {
        Ok(_) => panic!("revoke must fail while the back end maps the ring"),
        Err(busy) => busy.into_inner(),
    };
    drop(mapping);
    assert!(share.try_unshare().is_ok());
}
