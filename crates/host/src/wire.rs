//! The RPC format between a domain process and the host daemon.
//!
//! One request or reply per `SOCK_SEQPACKET` message, little-endian,
//! hand-encoded: a 4-byte header (magic `b'X'`, [`VERSION`], opcode, 0)
//! then the body. File descriptors travel beside it as `SCM_RIGHTS`.
//! Every field is read through [`Reader`], which checks lengths, so a
//! malformed message is a [`WireError`], never a panic.

/// Protocol version; a mismatch is refused.
pub const VERSION: u8 = 2;
/// First byte of every message.
pub const MAGIC: u8 = b'X';
/// Largest message, in bytes (requests and replies).
pub const MAX_MSG: usize = 64 * 1024;
/// Most fds one message may carry.
pub const MAX_FDS: usize = 64;
/// Most grant refs in one map request.
pub const MAX_MAP_REFS: usize = 1024;
/// Most copy segments in one copy request.
pub const MAX_COPY_OPS: usize = 8;

/// Request opcodes.
#[allow(missing_docs)]
pub mod op {
    pub const JOIN: u8 = 1;
    pub const ADD_CHUNK: u8 = 2;
    pub const RETIRE_CHUNK: u8 = 3;
    pub const MAP: u8 = 4;
    pub const UNMAP: u8 = 5;
    pub const SET_UNMAP_NOTIFY: u8 = 6;
    pub const SET_EXPORT_NOTIFY: u8 = 7;
    pub const FIRE_EXPORT_NOTIFY: u8 = 8;
    pub const COPY: u8 = 9;
    pub const EVT_OPEN: u8 = 10;
    pub const EVT_CLOSE_HANDLE: u8 = 11;
    pub const EVT_ALLOC_UNBOUND: u8 = 12;
    pub const EVT_BIND: u8 = 13;
    pub const EVT_NOTIFY: u8 = 14;
    pub const EVT_CLOSE: u8 = 15;
    pub const GRANTS: u8 = 16;
    pub const QUARANTINE: u8 = 17;
    /// Presents the host's privilege token for this connection.
    pub const AUTH: u8 = 18;
    /// On a connection that has joined (handed down by `xenshare exec`):
    /// the JOIN reply again, for the process that now holds it.
    pub const ATTACH: u8 = 19;
    /// Reply: success, body follows.
    pub const OK: u8 = 0x80;
    /// Reply: failure, an encoded [`super::RemoteError`] follows.
    pub const ERR: u8 = 0x81;
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short for what it claims.
    #[error("message truncated")]
    Truncated,
    /// Wrong magic or version.
    #[error("bad header (magic or version {0})")]
    BadHeader(u8),
    /// Unknown opcode.
    #[error("unknown opcode {0}")]
    BadOp(u8),
    /// A field out of range.
    #[error("bad field: {0}")]
    BadField(&'static str),
    /// Bytes left over after the body.
    #[error("trailing bytes")]
    Trailing,
}

/// Builds a message.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A message with opcode `op`.
    pub fn new(op: u8) -> Self {
        Self(vec![MAGIC, VERSION, op, 0])
    }
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends an optional u32 (presence byte, value).
    pub fn opt_u32(&mut self, v: Option<u32>) -> &mut Self {
        self.u8(u8::from(v.is_some())).u32(v.unwrap_or(0))
    }
    /// Appends length-prefixed bytes (u32 length).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
}

/// Reads a message, checking every length.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    /// The opcode from the header.
    pub op: u8,
}

impl<'a> Reader<'a> {
    /// Checks the header.
    pub fn new(buf: &'a [u8]) -> Result<Self, WireError> {
        let (hdr, rest) = buf.split_at_checked(4).ok_or(WireError::Truncated)?;
        if hdr[0] != MAGIC {
            return Err(WireError::BadHeader(hdr[0]));
        }
        if hdr[1] != VERSION {
            return Err(WireError::BadHeader(hdr[1]));
        }
        Ok(Self {
            buf: rest,
            op: hdr[2],
        })
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (a, rest) = self.buf.split_at_checked(N).ok_or(WireError::Truncated)?;
        self.buf = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(a);
        Ok(out)
    }
    /// A byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take::<1>()?[0])
    }
    /// A u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    /// A u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    /// A bool byte (0 or 1).
    pub fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::BadField("boolean")),
        }
    }
    /// An optional u32.
    pub fn opt_u32(&mut self) -> Result<Option<u32>, WireError> {
        let present = self.bool()?;
        let v = self.u32()?;
        Ok(present.then_some(v))
    }
    /// Length-prefixed bytes of at most `max`.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(WireError::BadField("length"));
        }
        let (a, rest) = self.buf.split_at_checked(n).ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(a)
    }
    /// Requires the whole message to have been read.
    pub fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

/// An error the daemon reports for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// A grant status other than okay.
    #[error("grant operation failed: {0}")]
    Gnt(xenshare::grant::GntSt),
    /// An event channel error.
    #[error(transparent)]
    Evt(#[from] xenshare::event::EventError),
    /// The request was refused (malformed, not joined, out of memory ...).
    #[error("refused by the host: {0}")]
    Refused(String),
}

impl RemoteError {
    /// Encodes as an error reply.
    pub fn encode(&self) -> Writer {
        use xenshare::event::EventError as E;
        let mut w = Writer::new(op::ERR);
        match self {
            RemoteError::Gnt(s) => {
                w.u8(1).u16(s.to_raw() as u16);
            }
            RemoteError::Evt(e) => {
                let (k, a, b) = match e {
                    E::NotBound(p) => (1, p.0, 0),
                    E::NotOffered { dom, port } => (2, u32::from(dom.0), port.0),
                    E::NoDomain(d) => (3, u32::from(d.0), 0),
                    E::NoFreePorts => (4, 0, 0),
                    E::Closed => (5, 0, 0),
                    E::Os(n) => (6, *n as u32, 0),
                };
                w.u8(2).u8(k).u32(a).u32(b);
            }
            RemoteError::Refused(s) => {
                let s = &s.as_bytes()[..s.len().min(1024)];
                w.u8(3).bytes(s);
            }
        }
        w
    }

    /// Decodes the body of an error reply.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        use xenshare::event::EventError as E;
        use xenshare::{DomId, Port};
        Ok(match r.u8()? {
            1 => RemoteError::Gnt(xenshare::grant::GntSt::from_raw(r.u16()? as i16)),
            2 => {
                let (k, a, b) = (r.u8()?, r.u32()?, r.u32()?);
                let dom = DomId(u16::try_from(a).map_err(|_| WireError::BadField("domid"))?);
                RemoteError::Evt(match k {
                    1 => E::NotBound(Port(a)),
                    2 => E::NotOffered { dom, port: Port(b) },
                    3 => E::NoDomain(dom),
                    4 => E::NoFreePorts,
                    5 => E::Closed,
                    6 => E::Os(a as i32),
                    _ => return Err(WireError::BadField("event error kind")),
                })
            }
            3 => RemoteError::Refused(String::from_utf8_lossy(r.bytes(1024)?).into_owned()),
            _ => return Err(WireError::BadField("error kind")),
        })
    }
}
