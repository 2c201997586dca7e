//! XenStore wire decoding.
//!
//! Invariants:
//! * a header decodes unless its length is over `XENSTORE_PAYLOAD_MAX`, and
//!   re-encodes to the same 16 bytes;
//! * a message decoded from a whole buffer re-encodes to that buffer;
//! * the stream decoder yields the same messages however the bytes are cut
//!   into pieces, never holds more than it was given, and the messages it
//!   yields re-encode to exactly the bytes it consumed;
//! * a request that parses re-encodes to a message that parses to the same
//!   request, of the same type; likewise watch events.

use xenshare::store::wire::{
    Decoder, Header, Message, MsgType, Request, WatchEvent, WireError, HEADER_LEN, PAYLOAD_MAX,
};

use crate::input::Input;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let cut = usize::from(input.u8()) + 1;
    let stream = input.rest();

    if let Some(h) = stream.first_chunk::<HEADER_LEN>() {
        match Header::decode(h) {
            Ok(hdr) => {
                assert_eq!(&hdr.encode(), h, "header does not round-trip");
                assert!(hdr.len as usize <= PAYLOAD_MAX);
            }
            Err(WireError::PayloadTooLong(n)) => assert!(n as usize > PAYLOAD_MAX),
            Err(e) => panic!("header decode failed with {e:?}"),
        }
    }

    if let Ok(m) = Message::decode(stream) {
        assert_eq!(
            m.to_bytes().as_deref(),
            Ok(stream),
            "message does not round-trip"
        );
    }

    // Whole versus piecewise (pieces of 1..=256 bytes, from the first byte).
    let whole = drain(stream, stream.len().max(1));
    let pieces = drain(stream, cut);
    assert_eq!(whole, pieces, "decoding depends on how the stream is cut");
    let (msgs, _) = &whole;
    let mut again = Vec::new();
    for m in msgs {
        assert!(m.payload.len() <= PAYLOAD_MAX);
        m.encode_into(&mut again).expect("decoded message encodes");
        check_request(m);
        check_watch_event(m);
        let _ = m.as_error();
    }
    assert_eq!(&again[..], &stream[..again.len()], "re-encoding differs");
}

/// Feeds `stream` to a decoder `cut` bytes at a time and drains it after
/// each piece. Returns the messages and the first error (which ends it).
fn drain(stream: &[u8], cut: usize) -> (Vec<Message>, Option<WireError>) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for piece in stream.chunks(cut) {
        d.push(piece);
        fed += piece.len();
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        let consumed: usize = out.iter().map(|m| HEADER_LEN + m.payload.len()).sum();
        assert_eq!(
            d.buffered(),
            fed - consumed,
            "decoder lost or invented bytes"
        );
        assert!(
            d.buffered() < HEADER_LEN + PAYLOAD_MAX,
            "decoder held a whole message back"
        );
    }
    (out, None)
}

fn check_request(m: &Message) {
    let Ok(req) = Request::parse(m) else {
        return;
    };
    // XS_WATCH with the optional third field parses as a plain WATCH.
    assert_eq!(req.msg_type(), m.ty, "request type changed");
    let again = req.to_message(m.req_id, m.tx_id);
    assert_eq!(again.ty, m.ty);
    match Request::parse(&again) {
        Ok(r2) => assert_eq!(r2, req, "request does not round-trip"),
        Err(e) => panic!("re-encoded {req:?} does not parse: {e:?}"),
    }
}

fn check_watch_event(m: &Message) {
    if m.ty != MsgType::WatchEvent {
        return;
    }
    let Ok(ev) = WatchEvent::parse(m) else {
        return;
    };
    let again = Message::watch_event(&ev.path, &ev.token);
    assert_eq!(
        WatchEvent::parse(&again),
        Ok(ev),
        "watch event does not round-trip"
    );
}
