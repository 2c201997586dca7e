//! Linux's network drivers, as met in the Xen lab, pinned on the emulator:
//! Linux's netfront leaves IPv4 TCP/UDP checksums blank for the back end
//! (`NETTXF_csum_blank`, always on), and Linux's netback hands partial
//! checksums (`NETRXF_csum_blank`) to a front end that did not write
//! `feature-no-csum-offload`. A TAP or a userspace stack behind us fills in
//! nothing, so xenshare completes them, and its front end asks for full ones.

use std::time::{Duration, Instant};

use xenshare::net::NetifRxResponse;
use xenshare::ring::BackRing;
use xenshare::GrantRef;
use xenshare_abi::netif::{
    NetifRxRequest, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED,
    NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED,
};
use xenshare_testkit::net::{
    data_page, evil_back, evil_front, tx_req, tx_response, world, TxFront, T,
};

type RxBack<'a> = BackRing<xenshare::mem::SharedMem<'a>, NetifRxRequest, NetifRxResponse>;

/// An Ethernet/IPv4/UDP frame with `payload` and a junk checksum (what a
/// checksum-offloading sender leaves in the field is not a checksum).
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x2a, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&5353u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34]);
    f.extend_from_slice(payload);
    f
}

/// RFC 1071 over the UDP pseudo-header and datagram: true if it verifies.
fn udp_checksum_ok(f: &[u8]) -> bool {
    let ip = &f[14..];
    let udp = &ip[20..];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&ip[12..20]);
    bytes.extend_from_slice(&[0, 17]);
    bytes.extend_from_slice(&udp[4..6]);
    bytes.extend_from_slice(udp);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut s: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s == 0xFFFF
}

#[test]
fn netback_completes_checksums_a_linux_netfront_leaves_blank() {
    let w = world();
    let (ef, bt, host) = evil_front(&w);
    let frame = udp_frame(b"a datagram from a Linux guest");
    assert!(!udp_checksum_ok(&frame));
    let page = data_page(&w, &frame);
    let mut tx = TxFront::attach_at(ef.tx.mem(), 0).unwrap();
    let flags = NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED; // what Linux sends
    tx.push_request(&tx_req(page.refs()[0], 0, flags, 1, frame.len() as u16))
        .unwrap();
    tx.push_requests().unwrap();
    ef.chan.notify().unwrap();
    assert_eq!(tx_response(&mut tx, &ef.chan).status, NETIF_RSP_OKAY);
    let out = host.recv_timeout(T).unwrap();
    assert_eq!(out.len(), frame.len());
    assert!(udp_checksum_ok(&out), "the host got a blank checksum");
    assert_eq!(out[42..], frame[42..], "payload unchanged");
    // A checksum-blank frame whose headers cannot be parsed is dropped.
    let arp = data_page(&w, &[0x08, 0x06].repeat(40));
    tx.push_request(&tx_req(arp.refs()[0], 0, flags, 2, 80))
        .unwrap();
    tx.push_requests().unwrap();
    ef.chan.notify().unwrap();
    assert_eq!(tx_response(&mut tx, &ef.chan).status, NETIF_RSP_ERROR);
    let exit = bt.stop().unwrap();
    assert_eq!(exit.stats.tx_frames, 1);
}

#[test]
fn netfront_asks_for_full_checksums_and_completes_partial_ones() {
    let w = world();
    let (eb, mut nf) = evil_back(&w);
    let mut c0 = w.xs(&w.dom0);
    let front = format!("/local/domain/{}/device/vif/0", w.guest.id().0);
    assert_eq!(
        c0.read(&format!("{front}/feature-no-csum-offload"))
            .unwrap(),
        b"1",
        "netfront must ask Linux's netback for complete checksums"
    );
    // A back end that sends a partial checksum anyway.
    let frame = udp_frame(b"a reply with its checksum left to the guest");
    let mut rx = RxBack::attach(eb.rx.mem()).unwrap();
    let req = rx.next_request().unwrap().expect("rx pages posted");
    let page = w
        .dom0
        .importer()
        .map_rw(w.guest.id(), &[GrantRef(req.gref)])
        .unwrap();
    page.mem().write(0, &frame).unwrap();
    drop(page);
    rx.push_response(&NetifRxResponse {
        id: req.id,
        offset: 0,
        flags: NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
        status: frame.len() as i16,
    })
    .unwrap();
    rx.push_responses().unwrap();
    eb.chan.notify().unwrap();
    let deadline = Instant::now() + T;
    let got = loop {
        if let Some(f) = nf.recv_timeout(Duration::from_millis(50)).unwrap() {
            break f;
        }
        assert!(Instant::now() < deadline, "frame never delivered");
    };
    assert!(udp_checksum_ok(&got), "delivered with a blank checksum");
    assert_eq!(got[42..], frame[42..]);
}
