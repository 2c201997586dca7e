//! Node permissions: `<letter><domid>` strings, owner first.

use alloc::format;
use alloc::vec::Vec;

use crate::DomId;

/// What one permission entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermKind {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl PermKind {
    /// The wire letter.
    pub const fn letter(self) -> char {
        match self {
            PermKind::None => 'n',
            PermKind::Read => 'r',
            PermKind::Write => 'w',
            PermKind::Both => 'b',
        }
    }

    /// Parses a wire letter.
    pub const fn from_letter(c: u8) -> Option<PermKind> {
        match c {
            b'n' => Some(PermKind::None),
            b'r' => Some(PermKind::Read),
            b'w' => Some(PermKind::Write),
            b'b' => Some(PermKind::Both),
            _ => None,
        }
    }

    /// True if it allows reading.
    pub const fn can_read(self) -> bool {
        matches!(self, PermKind::Read | PermKind::Both)
    }

    /// True if it allows writing.
    pub const fn can_write(self) -> bool {
        matches!(self, PermKind::Write | PermKind::Both)
    }
}

/// One `<letter><domid>` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: DomId,
    /// What it grants.
    pub kind: PermKind,
}

/// A permission string did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid permission string")]
pub struct BadPerm;

impl Perm {
    /// Parses one entry, e.g. `b"r5"`.
    pub fn parse(s: &[u8]) -> Result<Perm, BadPerm> {
        let (&letter, digits) = s.split_first().ok_or(BadPerm)?;
        let kind = PermKind::from_letter(letter).ok_or(BadPerm)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(BadPerm);
        }
        let d = core::str::from_utf8(digits).map_err(|_| BadPerm)?;
        let domid = d.parse::<u16>().map_err(|_| BadPerm)?;
        Ok(Perm {
            domid: DomId(domid),
            kind,
        })
    }
}

impl core::fmt::Display for Perm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}{}", self.kind.letter(), self.domid.0)
    }
}

/// Access a connection has to a node, as computed from its [`Perms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// May read.
    pub read: bool,
    /// May write.
    pub write: bool,
    /// Is the owner (or privileged): may change permissions.
    pub owner: bool,
}

impl Access {
    /// Everything: owners and the privileged domain.
    pub const ALL: Access = Access {
        read: true,
        write: true,
        owner: true,
    };

    /// True if every right in `need` is present.
    pub fn covers(self, need: Access) -> bool {
        (!need.read || self.read) && (!need.write || self.write) && (!need.owner || self.owner)
    }

    /// True if any right in `need` is present (C xenstored's parent check).
    pub fn any_of(self, need: Access) -> bool {
        (need.read && self.read) || (need.write && self.write) || (need.owner && self.owner)
    }
}

/// A node's permission list: the first entry names the owner and the
/// default access for domains not listed; later entries are per-domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Only the owner, with `default` for everyone else.
    pub fn owned_by(owner: DomId, default: PermKind) -> Perms {
        Perms(alloc::vec![Perm {
            domid: owner,
            kind: default,
        }])
    }

    /// Owned by `owner` (no access for others), readable by `reader`: what
    /// a toolstack gives a split device's directories (front end owned by
    /// the guest and readable by the back end, and vice versa).
    pub fn owned_by_readable_by(owner: DomId, reader: DomId) -> Perms {
        Perms(alloc::vec![
            Perm {
                domid: owner,
                kind: PermKind::None,
            },
            Perm {
                domid: reader,
                kind: PermKind::Read,
            },
        ])
    }

    /// From entries; `None` if empty.
    pub fn from_entries(entries: Vec<Perm>) -> Option<Perms> {
        (!entries.is_empty()).then_some(Perms(entries))
    }

    /// Parses a list of entries (the SET_PERMS / GET_PERMS fields).
    pub fn parse_fields(fields: &[&[u8]]) -> Result<Perms, BadPerm> {
        let v = fields
            .iter()
            .map(|f| Perm::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        Perms::from_entries(v).ok_or(BadPerm)
    }

    /// Parses a whole GET_PERMS reply payload (`perm\0perm\0...`).
    pub fn parse_wire(payload: &[u8]) -> Result<Perms, BadPerm> {
        let body = payload.strip_suffix(&[0]).ok_or(BadPerm)?;
        let fields: Vec<&[u8]> = body.split(|&b| b == 0).collect();
        Perms::parse_fields(&fields)
    }

    /// The NUL-terminated wire form.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            out.extend_from_slice(format!("{p}").as_bytes());
            out.push(0);
        }
        out
    }

    /// All entries, owner first.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// The owner.
    pub fn owner(&self) -> DomId {
        self.0[0].domid
    }

    /// Replaces the owner, keeping its default access.
    pub fn set_owner(&mut self, owner: DomId) {
        self.0[0].domid = owner;
    }

    /// The access `domid` has. `target` is the domain `domid` acts for
    /// (SET_TARGET), which it is treated as too. Domain 0 always has full
    /// access.
    pub fn access_for(&self, domid: DomId, target: Option<DomId>) -> Access {
        let me = |d: DomId| d == domid || Some(d) == target;
        if domid == DomId::DOM0 || me(self.owner()) {
            return Access::ALL;
        }
        let kind = self.0[1..]
            .iter()
            .find(|p| me(p.domid))
            .map_or(self.0[0].kind, |p| p.kind);
        Access {
            read: kind.can_read(),
            write: kind.can_write(),
            owner: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let p = Perms::parse_fields(&[b"n0", b"r1", b"w2", b"b3"]).unwrap();
        assert_eq!(p.to_wire(), b"n0\0r1\0w2\0b3\0");
        assert_eq!(Perms::parse_wire(&p.to_wire()).unwrap(), p);
        for bad in [&b""[..], b"x1", b"r", b"r-1", b"r65536", b"r1a", b"1"] {
            assert_eq!(Perm::parse(bad), Err(BadPerm), "{bad:?}");
        }
        assert!(Perms::parse_fields(&[]).is_err());
    }

    #[test]
    fn access_rules() {
        let p = Perms::parse_fields(&[b"r5", b"n6", b"w7", b"b8"]).unwrap();
        assert_eq!(p.access_for(DomId(0), None), Access::ALL);
        assert_eq!(p.access_for(DomId(5), None), Access::ALL);
        let r = p.access_for(DomId(9), None);
        assert!(r.read && !r.write && !r.owner);
        assert_eq!(p.access_for(DomId(6), None), Access::default());
        let w = p.access_for(DomId(7), None);
        assert!(!w.read && w.write);
        let b = p.access_for(DomId(8), None);
        assert!(b.read && b.write && !b.owner);
        // A domain acting for the owner is treated as the owner.
        assert_eq!(p.access_for(DomId(6), Some(DomId(5))), Access::ALL);
    }
}
