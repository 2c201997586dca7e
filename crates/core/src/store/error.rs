//! XenStore error names as they travel on the wire.

use core::fmt;

macro_rules! xs_errors {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// An error a XenStore server reports: the payload of an `XS_ERROR`
        /// reply is the errno *name* followed by a NUL, never a number.
        ///
        /// The variants are `xsd_errors[]` from `xs_wire.h`, in its order.
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum XsError {
            $($(#[$m])* $name,)*
        }

        impl XsError {
            /// Every known error, in `xsd_errors[]` order.
            pub const ALL: &'static [XsError] = &[$(XsError::$name,)*];

            /// The wire name, e.g. `"ENOENT"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(XsError::$name => stringify!($name),)*
                }
            }
        }
    };
}

xs_errors!(
    /// Invalid argument or malformed request.
    EINVAL,
    /// Permission denied.
    EACCES,
    /// Already exists (e.g. a duplicate watch).
    EEXIST,
    /// Is a directory.
    EISDIR,
    /// No such node, transaction or watch.
    ENOENT,
    /// Out of memory.
    ENOMEM,
    /// A quota was exceeded (what C xenstored 4.17 sends for node, node-size,
    /// transaction and permission-count quotas).
    ENOSPC,
    /// I/O error (internal corruption).
    EIO,
    /// Directory not empty.
    ENOTEMPTY,
    /// Request type not supported.
    ENOSYS,
    /// Read-only.
    EROFS,
    /// Busy (e.g. a nested transaction).
    EBUSY,
    /// The transaction conflicted: redo it.
    EAGAIN,
    /// Already connected.
    EISCONN,
    /// Reply too large, or the watch quota was exceeded (C xenstored 4.17).
    E2BIG,
    /// Operation not permitted (e.g. a guest changing a node's owner).
    EPERM,
);

impl XsError {
    /// C xenstored's "quota exceeded" error. There is no `EQUOTA` on the
    /// wire: Xen 4.17 reports node, node-size, transaction and permission
    /// quotas as `ENOSPC` (and the watch quota as [`XsError::E2BIG`]).
    pub const EQUOTA: XsError = XsError::ENOSPC;

    /// Parses a wire name (without the NUL). Unknown names give `None`.
    pub fn from_name(name: &[u8]) -> Option<XsError> {
        Self::ALL
            .iter()
            .copied()
            .find(|e| e.name().as_bytes() == name)
    }

    /// The Linux errno value for this name, for callers that want a number.
    pub const fn errno(self) -> i32 {
        match self {
            XsError::EINVAL => 22,
            XsError::EACCES => 13,
            XsError::EEXIST => 17,
            XsError::EISDIR => 21,
            XsError::ENOENT => 2,
            XsError::ENOMEM => 12,
            XsError::ENOSPC => 28,
            XsError::EIO => 5,
            XsError::ENOTEMPTY => 39,
            XsError::ENOSYS => 38,
            XsError::EROFS => 30,
            XsError::EBUSY => 16,
            XsError::EAGAIN => 11,
            XsError::EISCONN => 106,
            XsError::E2BIG => 7,
            XsError::EPERM => 1,
        }
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl core::error::Error for XsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(XsError::ALL.len(), 16);
        for e in XsError::ALL {
            assert_eq!(XsError::from_name(e.name().as_bytes()), Some(*e));
        }
        assert_eq!(XsError::from_name(b"EQUOTA"), None);
        assert_eq!(XsError::EQUOTA, XsError::ENOSPC);
        assert_eq!(XsError::ALL[0], XsError::EINVAL);
        assert_eq!(XsError::ALL[15], XsError::EPERM);
    }
}
