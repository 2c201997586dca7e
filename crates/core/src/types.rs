//! Xen's vocabulary as distinct types, so a port is never passed as a grant ref.

#![forbid(unsafe_code)]

use core::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident($inner:ty), $fmt:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> $inner {
                v.0
            }
        }
    };
}

id_type!(
    /// A domain id. Domain 0 is the privileged control domain.
    DomId(u16),
    "d{}"
);
id_type!(
    /// A grant reference: an index into the granting domain's grant table.
    GrantRef(u32),
    "gref {}"
);
id_type!(
    /// An event channel port, local to one domain.
    Port(u32),
    "port {}"
);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF`: "the calling domain" in hypercall arguments.
    pub const SELF: DomId = DomId(xenshare_abi::xen::DOMID_SELF);
    /// `DOMID_INVALID`.
    pub const INVALID: DomId = DomId(xenshare_abi::xen::DOMID_INVALID);

    /// True for ids that name a real domain (below `DOMID_FIRST_RESERVED`).
    pub const fn is_real(self) -> bool {
        self.0 < xenshare_abi::xen::DOMID_FIRST_RESERVED
    }
}

/// Whether the peer may write a granted or mapped page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The peer may only read.
    ReadOnly,
    /// The peer may read and write.
    ReadWrite,
}

impl Access {
    /// True for [`Access::ReadOnly`].
    pub const fn is_readonly(self) -> bool {
        matches!(self, Access::ReadOnly)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::ReadOnly => "ro",
            Access::ReadWrite => "rw",
        })
    }
}
