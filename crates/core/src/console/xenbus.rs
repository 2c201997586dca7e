//! Console discovery: the primary console's toolstack keys and reserved
//! grant, and the XenBus handshake of secondary consoles (xen-abi.md 5.3).
//!
//! **Primary.** The domain builder allocates the page, pre-grants it to the
//! back-end domain as reserved ref 0 and allocates an unbound port in the
//! guest for the back end; the toolstack publishes
//! `/local/domain/<id>/console/{ring-ref,port,type}` (ring-ref is the frame
//! number) where the guest may read but not write ([`publish_primary`]).
//! The back end reads the keys and maps ref 0 ([`attach_primary`]); the
//! guest starts a [`ConsoleFront`] on the page it was handed. No state
//! machine.
//!
//! **Secondary** (`/local/domain/<id>/device/console/<N>/`, made by
//! [`create_device`](crate::store::xenbus::create_device)). The front end
//! grants a fresh zeroed page through the safe grant API, allocates a port,
//! writes `ring-ref` (a grant ref) and `port` in one transaction, goes to
//! Initialised, and to Connected when the back end is
//! ([`connect_front`]). The back end goes to InitWait, waits for
//! Initialised, reads and checks the keys, maps the grant, binds the port
//! and goes to Connected ([`connect_back`]). Either may start first.
//! Closing is front-initiated; the front end revokes its page, and a back
//! end that keeps it mapped only sends it to quarantine
//! ([`ConsoleError::GrantKept`]).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;

use super::{ConsoleBack, ConsoleError, ConsoleFront};
use crate::error::DeviceError;
use crate::event::Channel;
use crate::grant::{Importer, Mapping};
use crate::platform::{EventChannels, ForeignMapper};
use crate::store::client::{Client, Transport};
use crate::store::perms::{Perm, PermKind, Perms};
use crate::store::xenbus::{read_port, read_u64, XS_RETRIES};
use crate::types::{DomId, GrantRef, Port};

/// The device type of consoles under `device/` and `backend/`.
pub const DEVTYPE: &str = "console";

/// `/local/domain/<guest>/console`: the primary console's directory.
pub fn primary_path(guest: DomId) -> String {
    format!("/local/domain/{}/console", guest.0)
}

/// What the toolstack published for a primary console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryInfo {
    /// The page's frame number (`ring-ref`).
    pub frame: u64,
    /// The guest's port for the console (`port`).
    pub port: Port,
}

/// The toolstack's part of a primary console: publishes `ring-ref`
/// (`frame`), `port` and `type` under [`primary_path`], owned by dom0,
/// readable by the guest and the back-end domain. Needs a privileged client.
pub fn publish_primary<T: Transport>(
    xs: &mut Client<T>,
    guest: DomId,
    backend: DomId,
    frame: u64,
    port: Port,
) -> Result<(), ConsoleError> {
    let dir = primary_path(guest);
    let mut entries = alloc::vec![
        Perm {
            domid: DomId::DOM0,
            kind: PermKind::None
        },
        Perm {
            domid: guest,
            kind: PermKind::Read
        },
    ];
    if backend != DomId::DOM0 && backend != guest {
        entries.push(Perm {
            domid: backend,
            kind: PermKind::Read,
        });
    }
    let perms =
        Perms::from_entries(entries).ok_or_else(|| DeviceError::bad_key("perms", "empty"))?;
    xs.transaction(XS_RETRIES, |tx| {
        tx.mkdir(&dir)?;
        tx.set_perms(&dir, &perms)?;
        for (k, v) in [
            ("ring-ref", format!("{frame}")),
            ("port", format!("{}", port.0)),
            ("type", String::from("xenconsoled")),
        ] {
            let key = format!("{dir}/{k}");
            tx.write(&key, v.as_bytes())?;
            tx.set_perms(&key, &perms)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Reads a primary console's keys (back end side).
pub fn read_primary<T: Transport>(
    xs: &mut Client<T>,
    guest: DomId,
) -> Result<PrimaryInfo, ConsoleError> {
    let dir = primary_path(guest);
    let frame = read_u64(xs, &dir, "ring-ref")?;
    let port = read_port(xs, &dir, "port")?;
    Ok(PrimaryInfo { frame, port })
}

/// Starts the guest end of a primary console: the builder's `page` and a
/// port allocated through the guest's handle `evt` for the back end
/// `backend` (on Xen the builder allocates it; the guest finds it in
/// `start_info`). Publish `front.port()` with [`publish_primary`].
pub fn primary_front<P: super::ConsolePage, E: EventChannels>(
    page: P,
    evt: &Arc<E>,
    backend: DomId,
) -> Result<ConsoleFront<P, E>, ConsoleError> {
    let chan = Channel::alloc_unbound(evt, backend)?;
    ConsoleFront::new(page, chan)
}

/// Attaches a back end to `guest`'s primary console: reads the toolstack's
/// keys, maps reserved grant ref 0 (`GNTTAB_RESERVED_CONSOLE`) and binds
/// the port. Attaching again after a back end stopped continues on the same
/// page.
pub fn attach_primary<M, E, T>(
    importer: &Importer<M>,
    evt: &Arc<E>,
    xs: &mut Client<T>,
    guest: DomId,
) -> Result<ConsoleBack<Mapping<M>, E>, ConsoleError>
where
    M: ForeignMapper,
    E: EventChannels,
    T: Transport,
{
    let info = read_primary(xs, guest)?;
    let gref = GrantRef(xenshare_abi::grant::GNTTAB_RESERVED_CONSOLE);
    let map = importer.map_rw(guest, &[gref])?;
    let chan = Channel::bind(evt, guest, info.port)?;
    ConsoleBack::attach(map, chan)
}

#[cfg(feature = "std")]
pub use self::std_only::*;

#[cfg(feature = "std")]
mod std_only {
    use core::time::Duration;

    use super::*;
    use crate::grant::{Exporter, Share};
    use crate::platform::GrantBackend;
    use crate::store::xenbus::{
        backend_path, frontend_path, read_domid, read_state, read_str, read_u32, wait_for_state,
        write_state, XenbusState,
    };
    use crate::types::Access;

    /// The guest end of a connected secondary console.
    pub struct SecondaryFront<B: GrantBackend, E: EventChannels> {
        console: ConsoleFront<Share<B>, E>,
        front_dir: String,
        back_dir: String,
    }

    impl<B: GrantBackend, E: EventChannels> core::fmt::Debug for SecondaryFront<B, E> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("SecondaryFront")
                .field("front_dir", &self.front_dir)
                .field("console", &self.console)
                .finish()
        }
    }

    /// The front end of secondary console `devid` of this domain: grants a
    /// page to the back end named in the front-end directory, publishes
    /// `ring-ref` and `port` in one transaction, goes to Initialised and
    /// waits (at most `timeout`) for the back end to be Connected.
    ///
    /// `evt` should be a handle dedicated to this console; `xs` a client
    /// without other watches.
    pub fn connect_front<B, E, T>(
        exporter: &Exporter<B>,
        evt: &Arc<E>,
        xs: &mut Client<T>,
        devid: u32,
        timeout: Duration,
    ) -> Result<SecondaryFront<B, E>, ConsoleError>
    where
        B: GrantBackend,
        E: EventChannels,
        T: Transport,
    {
        let front_dir = frontend_path(exporter.domid(), DEVTYPE, devid);
        let backend = read_domid(xs, &front_dir, "backend-id")?;
        let back_dir = read_str(xs, &front_dir, "backend")?;
        let share = exporter.share(backend, 1, Access::ReadWrite)?;
        let gref = share.refs()[0];
        let chan = Channel::alloc_unbound(evt, backend)?;
        let console = ConsoleFront::new(share, chan)?;
        let port = console.port();
        let front = SecondaryFront {
            console,
            front_dir,
            back_dir,
        };
        let dir = front.front_dir.clone();
        let r = (|| {
            xs.transaction(XS_RETRIES, |tx| {
                tx.write(&format!("{dir}/ring-ref"), format!("{}", gref.0).as_bytes())?;
                tx.write(&format!("{dir}/port"), format!("{}", port.0).as_bytes())?;
                Ok(())
            })?;
            write_state(xs, &dir, XenbusState::Initialised)?;
            let s = wait_for_state(xs, &front.back_dir, timeout, |s| {
                s == XenbusState::Connected || s >= XenbusState::Closing
            })?;
            if s != XenbusState::Connected {
                return Err(DeviceError::PeerState(s).into());
            }
            write_state(xs, &dir, XenbusState::Connected)?;
            Ok(())
        })();
        match r {
            Ok(()) => Ok(front),
            Err(e) => {
                // Best effort: tell the back end, then give the page back
                // (quarantined if the back end mapped it meanwhile).
                let _ = write_state(xs, &front.front_dir, XenbusState::Closed);
                drop(front);
                Err(e)
            }
        }
    }

    impl<B: GrantBackend, E: EventChannels> SecondaryFront<B, E> {
        /// The console.
        pub fn console(&mut self) -> &mut ConsoleFront<Share<B>, E> {
            &mut self.console
        }

        /// The front-end directory.
        pub fn front_dir(&self) -> &str {
            &self.front_dir
        }

        /// Closes the console (front-initiated): Closing, wait (at most
        /// `timeout`) for the back end to close, Closed, then revoke the
        /// page. A back end that still maps it gets
        /// [`ConsoleError::GrantKept`] and the page goes to quarantine —
        /// neither the page nor its grant ref is reused until it is proven
        /// released.
        pub fn close<T: Transport>(
            self,
            xs: &mut Client<T>,
            timeout: Duration,
        ) -> Result<(), ConsoleError> {
            let (share, chan) = self.console.into_parts();
            let mut r =
                write_state(xs, &self.front_dir, XenbusState::Closing).map_err(ConsoleError::from);
            if r.is_ok() {
                // A back end that never answers is handled by the revocation.
                let _ = wait_for_state(xs, &self.back_dir, timeout, |s| {
                    s == XenbusState::Closed || s == XenbusState::Unknown
                });
            }
            let closed = write_state(xs, &self.front_dir, XenbusState::Closed);
            if r.is_ok() {
                r = closed.map_err(ConsoleError::from);
            }
            drop(chan);
            match share.try_unshare() {
                Ok(pages) => {
                    drop(pages);
                    r
                }
                Err(busy) => {
                    // Dropping a live share quarantines it.
                    drop(busy.into_inner());
                    Err(ConsoleError::GrantKept)
                }
            }
        }
    }

    /// The back end of a connected secondary console.
    pub struct SecondaryBack<M: ForeignMapper, E: EventChannels> {
        console: ConsoleBack<Mapping<M>, E>,
        front_dir: String,
        back_dir: String,
    }

    impl<M: ForeignMapper, E: EventChannels> core::fmt::Debug for SecondaryBack<M, E> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("SecondaryBack")
                .field("back_dir", &self.back_dir)
                .field("console", &self.console)
                .finish()
        }
    }

    /// The back end of secondary console `devid` of `frontend`: goes to
    /// InitWait, waits (at most `timeout`) for the front end to be
    /// Initialised, reads and checks `ring-ref` and `port`, maps the grant,
    /// binds the port and goes to Connected.
    pub fn connect_back<M, E, T>(
        importer: &Importer<M>,
        evt: &Arc<E>,
        xs: &mut Client<T>,
        frontend: DomId,
        devid: u32,
        timeout: Duration,
    ) -> Result<SecondaryBack<M, E>, ConsoleError>
    where
        M: ForeignMapper,
        E: EventChannels,
        T: Transport,
    {
        let back_dir = backend_path(importer.domid(), DEVTYPE, frontend, devid);
        let front_dir = read_str(xs, &back_dir, "frontend")?;
        if front_dir != frontend_path(frontend, DEVTYPE, devid) {
            return Err(
                DeviceError::bad_key("frontend", "not the front end's device directory").into(),
            );
        }
        write_state(xs, &back_dir, XenbusState::InitWait)?;
        let s = wait_for_state(xs, &front_dir, timeout, |s| s >= XenbusState::Initialised)?;
        if !matches!(s, XenbusState::Initialised | XenbusState::Connected) {
            return Err(DeviceError::PeerState(s).into());
        }
        let gref = GrantRef(read_u32(xs, &front_dir, "ring-ref")?);
        let port = read_port(xs, &front_dir, "port")?;
        let map = importer.map_rw(frontend, &[gref])?;
        let chan = Channel::bind(evt, frontend, port)?;
        let console = ConsoleBack::attach(map, chan)?;
        write_state(xs, &back_dir, XenbusState::Connected)?;
        Ok(SecondaryBack {
            console,
            front_dir,
            back_dir,
        })
    }

    impl<M: ForeignMapper, E: EventChannels> SecondaryBack<M, E> {
        /// The console.
        pub fn console(&mut self) -> &mut ConsoleBack<Mapping<M>, E> {
            &mut self.console
        }

        /// The front end's current state (poll it to notice a close).
        pub fn frontend_state<T: Transport>(
            &self,
            xs: &mut Client<T>,
        ) -> Result<XenbusState, ConsoleError> {
            Ok(read_state(xs, &self.front_dir)?)
        }

        /// Disconnects: unmaps the page, closes the port, goes to Closed.
        pub fn close<T: Transport>(self, xs: &mut Client<T>) -> Result<(), ConsoleError> {
            drop(self.console);
            write_state(xs, &self.back_dir, XenbusState::Closed)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_path_is_the_console_directory() {
        assert_eq!(primary_path(DomId(7)), "/local/domain/7/console");
    }
}
