//! The bytes on the wire: the 16-byte `xsd_sockmsg` header, message types,
//! an incremental stream decoder and typed request payloads.
//!
//! Everything a peer sends is copied into an owned [`Message`] once and
//! checked here; a malformed message is a [`WireError`], never a panic.

use alloc::string::String;
use alloc::vec::Vec;

use super::error::XsError;
use super::perms::Perms;
use crate::DomId;

/// Size of the `xsd_sockmsg` header.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`: the largest payload in either direction.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: the limit C xenstored applies after stripping a
/// leading `/local/domain/<N>/`.
pub const REL_PATH_MAX: usize = 2048;
/// `DOMID_SELF` as IS_DOMAIN_INTRODUCED understands it.
pub const DOMID_SELF: u32 = 0x7FF0;

macro_rules! msg_types {
    ($($(#[$m:meta])* $name:ident = $val:literal,)*) => {
        /// An `XS_*` message type. Values the 4.17 header does not define
        /// are kept as [`MsgType::Other`] so a server can answer `ENOSYS`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MsgType {
            $($(#[$m])* $name,)*
            /// Any other value.
            Other(u32),
        }

        impl MsgType {
            /// The type for a raw header value.
            pub const fn from_raw(v: u32) -> MsgType {
                match v {
                    $($val => MsgType::$name,)*
                    other => MsgType::Other(other),
                }
            }

            /// The raw header value.
            pub const fn raw(self) -> u32 {
                match self {
                    $(MsgType::$name => $val,)*
                    MsgType::Other(v) => v,
                }
            }
        }
    };
}

msg_types! {
    /// `XS_CONTROL` (alias `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT` (server to client only).
    WatchEvent = 15,
    /// `XS_ERROR` (replies only).
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESTRICT`: removed upstream, always invalid.
    Restrict = 20,
    /// `XS_RESET_WATCHES`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
    /// `XS_GET_FEATURE` (upstream 4.21+).
    GetFeature = 23,
    /// `XS_SET_FEATURE` (upstream 4.21+).
    SetFeature = 24,
    /// `XS_GET_QUOTA` (upstream 4.21+).
    GetQuota = 25,
    /// `XS_SET_QUOTA` (upstream 4.21+).
    SetQuota = 26,
    /// `XS_INVALID`.
    Invalid = 0xFFFF,
}

/// A malformed message or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header announces more than [`PAYLOAD_MAX`] bytes. The stream is
    /// unusable afterwards: C xenstored drops such a connection.
    #[error("payload of {0} bytes exceeds XENSTORE_PAYLOAD_MAX (4096)")]
    PayloadTooLong(u32),
    /// A NUL-terminated field is missing its NUL.
    #[error("field not NUL-terminated")]
    Unterminated,
    /// Wrong number of NUL-terminated fields.
    #[error("expected {expected} field(s), found {found}")]
    FieldCount {
        /// How many the request type needs.
        expected: usize,
        /// How many arrived.
        found: usize,
    },
    /// A field that must be text is not UTF-8.
    #[error("field is not valid UTF-8")]
    NotUtf8,
    /// A number field did not parse.
    #[error("invalid number {0:?}")]
    BadNumber(String),
    /// A permission string did not parse.
    #[error("invalid permission string")]
    BadPerm,
    /// A type that is not a request (or not supported).
    #[error("unsupported message type {0}")]
    Unsupported(u32),
    /// Bytes after the message (decode of a single buffer).
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
    /// The buffer ends inside the message.
    #[error("truncated message")]
    Truncated,
}

impl WireError {
    /// The error a server answers with for this problem.
    pub fn to_xs(&self) -> XsError {
        match self {
            WireError::Unsupported(_) => XsError::ENOSYS,
            WireError::PayloadTooLong(_) => XsError::E2BIG,
            _ => XsError::EINVAL,
        }
    }
}

/// The decoded `xsd_sockmsg` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub ty: MsgType,
    /// Request id chosen by the client and echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 for none.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Decodes a header (native byte order, as on the shared ring and the
    /// Unix socket) and checks the length limit.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let len = word(12);
        if len as usize > PAYLOAD_MAX {
            return Err(WireError::PayloadTooLong(len));
        }
        Ok(Header {
            ty: MsgType::from_raw(word(0)),
            req_id: word(4),
            tx_id: word(8),
            len,
        })
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.ty.raw().to_ne_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_ne_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_ne_bytes());
        out[12..16].copy_from_slice(&self.len.to_ne_bytes());
        out
    }
}

/// One whole message: header fields plus its owned payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message type.
    pub ty: MsgType,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Payload, at most [`PAYLOAD_MAX`] bytes when encoded.
    pub payload: Vec<u8>,
}

impl Message {
    /// A message with the given fields.
    pub fn new(ty: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            ty,
            req_id,
            tx_id,
            payload,
        }
    }

    /// A reply to `req` of the same type.
    pub fn reply_to(req: &Message, payload: Vec<u8>) -> Message {
        Message::new(req.ty, req.req_id, req.tx_id, payload)
    }

    /// The `OK\0` reply to `req`.
    pub fn ok(req: &Message) -> Message {
        Message::reply_to(req, b"OK\0".to_vec())
    }

    /// An `XS_ERROR` reply to `req`.
    pub fn error(req: &Message, err: XsError) -> Message {
        let mut p = Vec::with_capacity(err.name().len() + 1);
        p.extend_from_slice(err.name().as_bytes());
        p.push(0);
        Message::new(MsgType::Error, req.req_id, req.tx_id, p)
    }

    /// An `XS_WATCH_EVENT` for `path` and `token` (req_id = tx_id = 0).
    pub fn watch_event(path: &str, token: &[u8]) -> Message {
        let mut p = Vec::with_capacity(path.len() + token.len() + 2);
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token);
        p.push(0);
        Message::new(MsgType::WatchEvent, 0, 0, p)
    }

    /// The header for this message. Fails if the payload is too long.
    pub fn header(&self) -> Result<Header, WireError> {
        if self.payload.len() > PAYLOAD_MAX {
            return Err(WireError::PayloadTooLong(
                u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
            ));
        }
        Ok(Header {
            ty: self.ty,
            req_id: self.req_id,
            tx_id: self.tx_id,
            // Checked against PAYLOAD_MAX just above.
            len: self.payload.len() as u32,
        })
    }

    /// Appends the encoded message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let h = self.header()?;
        out.extend_from_slice(&h.encode());
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    /// The encoded message.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut v)?;
        Ok(v)
    }

    /// Decodes exactly one message from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut d = Decoder::new();
        d.push(bytes);
        let m = d.next_message()?.ok_or(WireError::Truncated)?;
        match d.buffered() {
            0 => Ok(m),
            n => Err(WireError::Trailing(n)),
        }
    }

    /// For an `XS_ERROR` message, the error it names (`EINVAL` if the name
    /// is unknown, as the C library does).
    pub fn as_error(&self) -> Option<XsError> {
        if self.ty != MsgType::Error {
            return None;
        }
        let name = self.payload.strip_suffix(&[0]).unwrap_or(&self.payload);
        Some(XsError::from_name(name).unwrap_or(XsError::EINVAL))
    }
}

/// Reassembles messages from a byte stream that may deliver them in pieces.
///
/// Feed it with [`Decoder::push`] and drain it with
/// [`Decoder::next_message`]. After a [`WireError::PayloadTooLong`] the
/// stream has lost framing; the caller must drop the connection.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a returned message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let avail = &self.buf[self.start..];
        let Some(hdr) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let h = Header::decode(hdr)?;
        let total = HEADER_LEN + h.len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..total].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 2 * (HEADER_LEN + PAYLOAD_MAX) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Message::new(h.ty, h.req_id, h.tx_id, payload)))
    }
}

/// Splits a payload made only of NUL-terminated fields.
pub fn split_fields(payload: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let Some(body) = payload.strip_suffix(&[0]) else {
        return Err(WireError::Unterminated);
    };
    Ok(body.split(|&b| b == 0).collect())
}

fn text(b: &[u8]) -> Result<String, WireError> {
    core::str::from_utf8(b)
        .map(String::from)
        .map_err(|_| WireError::NotUtf8)
}

fn number(b: &[u8]) -> Result<u32, WireError> {
    let s = core::str::from_utf8(b).map_err(|_| WireError::NotUtf8)?;
    s.parse::<u32>()
        .map_err(|_| WireError::BadNumber(String::from(s)))
}

fn fields_exact(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, WireError> {
    let f = split_fields(payload)?;
    if f.len() != n {
        return Err(WireError::FieldCount {
            expected: n,
            found: f.len(),
        });
    }
    Ok(f)
}

fn one_text(payload: &[u8]) -> Result<String, WireError> {
    text(fields_exact(payload, 1)?[0])
}

fn one_number(payload: &[u8]) -> Result<u32, WireError> {
    number(fields_exact(payload, 1)?[0])
}

fn push_field(out: &mut Vec<u8>, f: &[u8]) {
    out.extend_from_slice(f);
    out.push(0);
}

/// A request, parsed from (or to be encoded into) a [`Message`] payload.
///
/// Paths are carried as given (relative or absolute); checking them against
/// the path rules needs the connection's domain and is done by the server
/// ([`super::path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `XS_CONTROL`: command and arguments.
    Control(Vec<Vec<u8>>),
    /// `XS_DIRECTORY`.
    Directory(String),
    /// `XS_DIRECTORY_PART`: path and byte offset into the child list.
    DirectoryPart {
        /// Node path.
        path: String,
        /// Offset in bytes into the NUL-separated child list.
        offset: u32,
    },
    /// `XS_READ`.
    Read(String),
    /// `XS_GET_PERMS`.
    GetPerms(String),
    /// `XS_WATCH`.
    Watch {
        /// Watched path (or `@introduceDomain` / `@releaseDomain`).
        path: String,
        /// Opaque token echoed in events.
        token: Vec<u8>,
    },
    /// `XS_UNWATCH`.
    Unwatch {
        /// Watched path.
        path: String,
        /// Token given to WATCH.
        token: Vec<u8>,
    },
    /// `XS_TRANSACTION_START`.
    TransactionStart,
    /// `XS_TRANSACTION_END`: `true` commits, `false` aborts.
    TransactionEnd(bool),
    /// `XS_INTRODUCE`.
    Introduce {
        /// The new domain.
        domid: DomId,
        /// Frame of its xenstore page (signed decimal on the wire).
        gfn: i64,
        /// Its xenstore event channel port.
        port: u32,
    },
    /// `XS_RELEASE`.
    Release(DomId),
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath(DomId),
    /// `XS_WRITE`.
    Write {
        /// Node path.
        path: String,
        /// Raw value bytes.
        value: Vec<u8>,
    },
    /// `XS_MKDIR`.
    Mkdir(String),
    /// `XS_RM`.
    Rm(String),
    /// `XS_SET_PERMS`.
    SetPerms {
        /// Node path.
        path: String,
        /// New permissions.
        perms: Perms,
    },
    /// `XS_IS_DOMAIN_INTRODUCED` (domid as sent: `DOMID_SELF` is legal).
    IsDomainIntroduced(u32),
    /// `XS_RESUME`.
    Resume(DomId),
    /// `XS_SET_TARGET`.
    SetTarget {
        /// The domain given the rights.
        domid: DomId,
        /// The domain it may act for.
        target: DomId,
    },
    /// `XS_RESET_WATCHES`.
    ResetWatches,
}

fn domid(n: u32) -> Result<DomId, WireError> {
    u16::try_from(n)
        .map(DomId)
        .map_err(|_| WireError::BadNumber(alloc::format!("{n}")))
}

impl Request {
    /// Parses the payload of `msg` according to its type.
    pub fn parse(msg: &Message) -> Result<Request, WireError> {
        let p = &msg.payload[..];
        Ok(match msg.ty {
            MsgType::Control => {
                let f = split_fields(p)?;
                Request::Control(f.into_iter().map(<[u8]>::to_vec).collect())
            }
            MsgType::Directory => Request::Directory(one_text(p)?),
            MsgType::Read => Request::Read(one_text(p)?),
            MsgType::GetPerms => Request::GetPerms(one_text(p)?),
            MsgType::Mkdir => Request::Mkdir(one_text(p)?),
            MsgType::Rm => Request::Rm(one_text(p)?),
            MsgType::Watch | MsgType::Unwatch => {
                let f = split_fields(p)?;
                // Upstream may add a depth field; it is accepted and ignored.
                if f.len() != 2 && !(msg.ty == MsgType::Watch && f.len() == 3) {
                    return Err(WireError::FieldCount {
                        expected: 2,
                        found: f.len(),
                    });
                }
                let path = text(f[0])?;
                let token = f[1].to_vec();
                if msg.ty == MsgType::Watch {
                    Request::Watch { path, token }
                } else {
                    Request::Unwatch { path, token }
                }
            }
            // The payload is meaningless (clients send "\0"); C xenstored
            // ignores it.
            MsgType::TransactionStart => Request::TransactionStart,
            MsgType::TransactionEnd => match fields_exact(p, 1)?[0] {
                b"T" => Request::TransactionEnd(true),
                b"F" => Request::TransactionEnd(false),
                _ => return Err(WireError::BadNumber(String::from("T/F"))),
            },
            MsgType::Introduce => {
                let f = split_fields(p)?;
                if f.len() < 3 {
                    return Err(WireError::FieldCount {
                        expected: 3,
                        found: f.len(),
                    });
                }
                let gfn_s = core::str::from_utf8(f[1]).map_err(|_| WireError::NotUtf8)?;
                let gfn = gfn_s
                    .parse::<i64>()
                    .or_else(|_| gfn_s.parse::<u64>().map(|v| v as i64))
                    .map_err(|_| WireError::BadNumber(String::from(gfn_s)))?;
                Request::Introduce {
                    domid: domid(number(f[0])?)?,
                    gfn,
                    port: number(f[2])?,
                }
            }
            MsgType::Release => Request::Release(domid(one_number(p)?)?),
            MsgType::Resume => Request::Resume(domid(one_number(p)?)?),
            MsgType::GetDomainPath => Request::GetDomainPath(domid(one_number(p)?)?),
            MsgType::IsDomainIntroduced => Request::IsDomainIntroduced(one_number(p)?),
            MsgType::Write => {
                let nul = p
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(WireError::Unterminated)?;
                Request::Write {
                    path: text(&p[..nul])?,
                    value: p[nul + 1..].to_vec(),
                }
            }
            MsgType::SetPerms => {
                let f = split_fields(p)?;
                if f.len() < 2 {
                    return Err(WireError::FieldCount {
                        expected: 2,
                        found: f.len(),
                    });
                }
                Request::SetPerms {
                    path: text(f[0])?,
                    perms: Perms::parse_fields(&f[1..]).map_err(|_| WireError::BadPerm)?,
                }
            }
            MsgType::SetTarget => {
                let f = fields_exact(p, 2)?;
                Request::SetTarget {
                    domid: domid(number(f[0])?)?,
                    target: domid(number(f[1])?)?,
                }
            }
            MsgType::ResetWatches => Request::ResetWatches,
            MsgType::DirectoryPart => {
                let f = fields_exact(p, 2)?;
                Request::DirectoryPart {
                    path: text(f[0])?,
                    offset: number(f[1])?,
                }
            }
            other => return Err(WireError::Unsupported(other.raw())),
        })
    }

    /// The message type for this request.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Control(_) => MsgType::Control,
            Request::Directory(_) => MsgType::Directory,
            Request::DirectoryPart { .. } => MsgType::DirectoryPart,
            Request::Read(_) => MsgType::Read,
            Request::GetPerms(_) => MsgType::GetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd(_) => MsgType::TransactionEnd,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release(_) => MsgType::Release,
            Request::GetDomainPath(_) => MsgType::GetDomainPath,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir(_) => MsgType::Mkdir,
            Request::Rm(_) => MsgType::Rm,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::IsDomainIntroduced(_) => MsgType::IsDomainIntroduced,
            Request::Resume(_) => MsgType::Resume,
            Request::SetTarget { .. } => MsgType::SetTarget,
            Request::ResetWatches => MsgType::ResetWatches,
        }
    }

    /// The payload bytes for this request.
    pub fn payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Control(args) => args.iter().for_each(|a| push_field(&mut out, a)),
            Request::Directory(p)
            | Request::Read(p)
            | Request::GetPerms(p)
            | Request::Mkdir(p)
            | Request::Rm(p) => push_field(&mut out, p.as_bytes()),
            Request::DirectoryPart { path, offset } => {
                push_field(&mut out, path.as_bytes());
                push_field(&mut out, alloc::format!("{offset}").as_bytes());
            }
            Request::Watch { path, token } | Request::Unwatch { path, token } => {
                push_field(&mut out, path.as_bytes());
                push_field(&mut out, token);
            }
            Request::TransactionStart | Request::ResetWatches => out.push(0),
            Request::TransactionEnd(commit) => {
                push_field(&mut out, if *commit { b"T" } else { b"F" })
            }
            Request::Introduce { domid, gfn, port } => {
                push_field(&mut out, alloc::format!("{}", domid.0).as_bytes());
                push_field(&mut out, alloc::format!("{gfn}").as_bytes());
                push_field(&mut out, alloc::format!("{port}").as_bytes());
            }
            Request::Release(d) | Request::Resume(d) | Request::GetDomainPath(d) => {
                push_field(&mut out, alloc::format!("{}", d.0).as_bytes())
            }
            Request::IsDomainIntroduced(d) => {
                push_field(&mut out, alloc::format!("{d}").as_bytes())
            }
            Request::Write { path, value } => {
                push_field(&mut out, path.as_bytes());
                out.extend_from_slice(value);
            }
            Request::SetPerms { path, perms } => {
                push_field(&mut out, path.as_bytes());
                out.extend_from_slice(&perms.to_wire());
            }
            Request::SetTarget { domid, target } => {
                push_field(&mut out, alloc::format!("{}", domid.0).as_bytes());
                push_field(&mut out, alloc::format!("{}", target.0).as_bytes());
            }
        }
        out
    }

    /// The request as a message.
    pub fn to_message(&self, req_id: u32, tx_id: u32) -> Message {
        Message::new(self.msg_type(), req_id, tx_id, self.payload())
    }
}

/// A watch event: the path that changed (relative if the watch was) and the
/// watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Path that fired.
    pub path: String,
    /// Token given at registration.
    pub token: Vec<u8>,
}

impl WatchEvent {
    /// Parses an `XS_WATCH_EVENT` payload (`path\0token\0`).
    pub fn parse(msg: &Message) -> Result<WatchEvent, WireError> {
        if msg.ty != MsgType::WatchEvent {
            return Err(WireError::Unsupported(msg.ty.raw()));
        }
        let f = split_fields(&msg.payload)?;
        if f.len() < 2 {
            return Err(WireError::FieldCount {
                expected: 2,
                found: f.len(),
            });
        }
        Ok(WatchEvent {
            path: text(f[0])?,
            token: f[1].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn header_round_trip() {
        let m = Message::new(MsgType::Write, 7, 3, b"/a\0xyz".to_vec());
        let b = m.to_bytes().unwrap();
        assert_eq!(b.len(), 16 + 6);
        assert_eq!(&b[0..4], &11u32.to_ne_bytes());
        assert_eq!(&b[12..16], &6u32.to_ne_bytes());
        assert_eq!(Message::decode(&b).unwrap(), m);
    }

    #[test]
    fn too_long_rejected_both_ways() {
        let m = Message::new(MsgType::Write, 1, 0, vec![b'a'; PAYLOAD_MAX + 1]);
        assert_eq!(m.to_bytes(), Err(WireError::PayloadTooLong(4097)));
        let mut h = Header {
            ty: MsgType::Read,
            req_id: 0,
            tx_id: 0,
            len: 4097,
        }
        .encode()
        .to_vec();
        let mut d = Decoder::new();
        d.push(&h);
        assert_eq!(d.next_message(), Err(WireError::PayloadTooLong(4097)));
        h[12..16].copy_from_slice(&4096u32.to_ne_bytes());
        let mut d = Decoder::new();
        d.push(&h);
        assert_eq!(d.next_message(), Ok(None));
    }

    #[test]
    fn decoder_reassembles_split_messages() {
        let a = Request::Read("/x".into())
            .to_message(1, 0)
            .to_bytes()
            .unwrap();
        let b = Request::Write {
            path: "/y".into(),
            value: b"v".to_vec(),
        }
        .to_message(2, 0)
        .to_bytes()
        .unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for byte in &all {
            d.push(core::slice::from_ref(byte));
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].req_id, 1);
        assert_eq!(
            Request::parse(&got[1]).unwrap(),
            Request::Write {
                path: "/y".into(),
                value: b"v".to_vec()
            }
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let m = |ty, p: &[u8]| Message::new(ty, 0, 0, p.to_vec());
        assert_eq!(
            Request::parse(&m(MsgType::Read, b"/a")),
            Err(WireError::Unterminated)
        );
        assert!(Request::parse(&m(MsgType::Read, b"/a\0/b\0")).is_err());
        assert!(Request::parse(&m(MsgType::Write, b"noterm")).is_err());
        assert!(Request::parse(&m(MsgType::Watch, b"/a\0")).is_err());
        assert!(Request::parse(&m(MsgType::TransactionEnd, b"X\0")).is_err());
        assert!(Request::parse(&m(MsgType::Introduce, b"1\0x\0\x33\0")).is_err());
        assert!(Request::parse(&m(MsgType::GetDomainPath, b"70000\0")).is_err());
        assert!(Request::parse(&m(MsgType::SetPerms, b"/a\0q1\0")).is_err());
        assert!(Request::parse(&m(MsgType::Read, b"\xff\0")).is_err());
        assert_eq!(
            Request::parse(&m(MsgType::Other(99), b""))
                .unwrap_err()
                .to_xs(),
            XsError::ENOSYS
        );
        assert_eq!(
            Request::parse(&m(MsgType::WatchEvent, b""))
                .unwrap_err()
                .to_xs(),
            XsError::ENOSYS
        );
    }

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request::Directory("/a".into()),
            Request::DirectoryPart {
                path: "/a".into(),
                offset: 5,
            },
            Request::Watch {
                path: "a/b".into(),
                token: b"tok".to_vec(),
            },
            Request::TransactionEnd(true),
            Request::Introduce {
                domid: DomId(3),
                gfn: -1,
                port: 5,
            },
            Request::SetPerms {
                path: "/a".into(),
                perms: Perms::parse_fields(&[b"n0", b"r3"]).unwrap(),
            },
            Request::SetTarget {
                domid: DomId(2),
                target: DomId(3),
            },
            Request::Write {
                path: "/a".into(),
                value: vec![0, 1, 2],
            },
        ];
        for r in reqs {
            let m = r.to_message(9, 0);
            let back = Request::parse(&Message::decode(&m.to_bytes().unwrap()).unwrap());
            assert_eq!(back.unwrap(), r);
        }
    }

    #[test]
    fn error_and_event_replies() {
        let req = Message::new(MsgType::Read, 4, 2, b"/a\0".to_vec());
        let e = Message::error(&req, XsError::ENOENT);
        assert_eq!(e.payload, b"ENOENT\0");
        assert_eq!((e.req_id, e.tx_id), (4, 2));
        assert_eq!(e.as_error(), Some(XsError::ENOENT));
        let ev = Message::watch_event("/a/b", b"t");
        let w = WatchEvent::parse(&ev).unwrap();
        assert_eq!(w.path, "/a/b");
        assert_eq!(w.token, b"t");
    }
}
