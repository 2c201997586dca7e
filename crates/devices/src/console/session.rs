//! Consoles that come and go, as `xl console` across processes: a guest
//! serves its console to whoever attaches, and a back end attaches, pumps to
//! a terminal, detaches, and can attach again later.
//!
//! **Design.** The console is a secondary console over XenBus (device
//! `console/0`, xen-abi.md 5.3), set up anew for every attach:
//!
//! * The attaching side ([`attach`]) is two things at once. As the
//!   toolstack it uses a privileged (dom0) XenStore client to create the
//!   device's front- and back-end directories
//!   ([`create_device`]) with itself as the back-end domain; on the
//!   multi-process host that client is dom0's xenstored socket, which only
//!   the host's user reaches. As the back end it is a domain of its own
//!   (on the host: a fresh domain joined for this attach), so it maps the
//!   guest's grant and binds the port with a domain's own handles — the
//!   emulator's grant and event rules apply to it as to any domain. Ctrl-]
//!   detaches: the back end unmaps, goes to Closed, waits for the front end
//!   to close, and removes both directories.
//! * The guest ([`serve`]) waits for its `device/console/0` to appear,
//!   connects as front end (a fresh zeroed page granted to that back end,
//!   a new port), runs a session on it until the back end goes away, then
//!   closes front-initiated (the page is revoked; a back end that kept it
//!   mapped only sends it to quarantine) and waits for the next attach.
//!
//! A back end per attach keeps every attach a fresh, complete handshake:
//! no state survives from an earlier back end, so a back end that died
//! (killed mid-session) costs nothing but its directories, which the next
//! attach replaces. Guest output while nobody is attached is not kept (the
//! demo guest's shell runs only while attached); each attach starts with a
//! fresh prompt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenshare::console::xenbus::{connect_back, connect_front, DEVTYPE};
use xenshare::console::{ConsoleError, ConsoleFront, ConsoleIo, HostError};
use xenshare::error::DeviceError;
use xenshare::grant::{Exporter, Importer, Share};
use xenshare::platform::{EventChannels, ForeignMapper, GrantBackend};
use xenshare::store::client::{Client, ClientError, Transport};
use xenshare::store::xenbus::{
    backend_path, create_device, frontend_path, read_state, read_str_opt, wait_for_state,
    DeviceSpec, XenbusState,
};
use xenshare::DomId;

use super::{GuestConsole, ShellExit};

/// The device id of the attachable console.
pub const DEVID: u32 = 0;

/// How long each side waits for the other during a handshake or close.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the back end looks at the front end's state while pumping.
const STATE_POLL: Duration = Duration::from_millis(100);
/// The back end's event wait between terminal polls.
const BACK_POLL: Duration = Duration::from_millis(10);
/// The guest's wait between checks of its stop flag.
const GUEST_TICK: Duration = Duration::from_millis(50);

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// No such domain (its `/local/domain/<id>` does not exist).
    #[error("no domain {} (not joined to this host)", .0 .0)]
    NoDomain(DomId),
    /// Another back end is attached right now.
    #[error("the console of domain {} is already attached (by domain {})", guest.0, by.0)]
    AlreadyAttached {
        /// The guest.
        guest: DomId,
        /// The domain of the attached back end.
        by: DomId,
    },
    /// The guest did not connect a front end in time.
    #[error(
        "domain {} did not connect its console within {HANDSHAKE_TIMEOUT:?} \
         (is it running a console front end, e.g. `xenshare console --demo-guest --host`?)",
        .0 .0
    )]
    NoFrontEnd(DomId),
    /// A XenStore request failed.
    #[error("xenstore: {0}")]
    Store(#[from] ClientError),
    /// The console failed.
    #[error("console: {0}")]
    Console(#[from] ConsoleError),
}

/// How an attached session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEnd {
    /// The user detached (Ctrl-]); the guest goes on.
    Detached,
    /// The guest closed its console (its shell exited, or it died).
    GuestClosed,
    /// The host terminal closed (or piped input ended).
    TerminalClosed,
}

/// A `backend-id` value with the one strictness of XenBus keys
/// ([`xenshare::store::xenbus::parse_decimal`]); `None` if malformed.
fn domid_of(raw: &[u8]) -> Option<DomId> {
    xenshare::store::xenbus::parse_decimal(raw)
        .and_then(|v| u16::try_from(v).ok())
        .map(DomId)
}

/// How long [`attach`] waits for the domain of an earlier back end to go
/// before it refuses with [`AttachError::AlreadyAttached`].
const GONE_GRACE: Duration = Duration::from_secs(2);

/// Waits at most `grace` for `/local/domain/<dom>` to disappear (a watch on
/// it, re-read on every event); returns whether it did.
fn domain_gone_within<T: Transport>(
    xs: &mut Client<T>,
    dom: DomId,
    grace: Duration,
) -> Result<bool, ClientError> {
    let path = format!("/local/domain/{}", dom.0);
    let token = format!("console-attach-gone:{}", dom.0);
    let deadline = Instant::now() + grace;
    xs.watch(&path, token.as_bytes())?;
    let r = (|| loop {
        if xs.try_read(&path)?.is_none() {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        if xs.next_event(Some(left))?.is_none() {
            return Ok(xs.try_read(&path)?.is_none());
        }
    })();
    let _ = xs.unwatch(&path, token.as_bytes());
    r
}

/// Attaches `io` to `guest`'s console: creates device `console/0` with
/// `xs0` (a privileged client) with the importer's domain as back end,
/// connects the back end (with `xs`, that domain's own client), pumps until
/// the user detaches, the guest closes or the terminal closes, then
/// disconnects and removes the device.
pub fn attach<M, E, T0, T>(
    importer: &Importer<M>,
    evt: &Arc<E>,
    xs0: &mut Client<T0>,
    xs: &mut Client<T>,
    guest: DomId,
    io: &mut impl ConsoleIo,
) -> Result<AttachEnd, AttachError>
where
    M: ForeignMapper,
    E: EventChannels,
    T0: Transport,
    T: Transport,
{
    let me = importer.domid();
    if xs0
        .try_read(&format!("/local/domain/{}", guest.0))?
        .is_none()
    {
        return Err(AttachError::NoDomain(guest));
    }
    let front = frontend_path(guest, DEVTYPE, DEVID);
    if let Some(by) = xs0
        .try_read(&format!("{front}/backend-id"))?
        .and_then(|v| domid_of(&v))
    {
        let state = read_state(xs0, &front)?;
        // A back end whose process just died is gone a moment later (its
        // domain is destroyed when its connection closes): give it that
        // moment before calling the console taken.
        let open = state < XenbusState::Closing && state != XenbusState::Unknown;
        if open && by != me && !domain_gone_within(xs0, by, GONE_GRACE)? {
            return Err(AttachError::AlreadyAttached { guest, by });
        }
        // A stale device from a back end that died: let the guest finish
        // closing its end (it revokes its page), then replace it.
        if open {
            let _ = wait_for_state(xs0, &front, HANDSHAKE_TIMEOUT, |s| {
                s == XenbusState::Closed || s == XenbusState::Unknown
            });
        }
        xs0.rm(&front)?;
    }
    let back_dir = backend_path(me, DEVTYPE, guest, DEVID);
    create_device(
        xs0,
        &DeviceSpec {
            devtype: DEVTYPE,
            devid: DEVID,
            frontend: guest,
            backend: me,
            front_keys: &[],
            back_keys: &[],
        },
    )?;
    let remove = |xs0: &mut Client<T0>| {
        // Best effort: the guest may have gone meanwhile.
        let _ = xs0.rm(&front);
        let _ = xs0.rm(&back_dir);
    };
    let mut back = match connect_back(importer, evt, xs, guest, DEVID, HANDSHAKE_TIMEOUT) {
        Ok(b) => b,
        Err(e) => {
            remove(xs0);
            return Err(match e {
                ConsoleError::Core(DeviceError::Store(ClientError::Timeout)) => {
                    AttachError::NoFrontEnd(guest)
                }
                e => e.into(),
            });
        }
    };
    let mut next_look = Instant::now() + STATE_POLL;
    let mut guest_closed = false;
    let r = back.console().run(io, BACK_POLL, || {
        if Instant::now() < next_look {
            return false;
        }
        next_look = Instant::now() + STATE_POLL;
        guest_closed = !matches!(
            read_state(xs, &front),
            Ok(XenbusState::Initialised | XenbusState::Connected)
        );
        guest_closed
    });
    let end = match r {
        Ok(()) => {
            // The guest's last words are in the ring: deliver them.
            while back.console().pump(io).map(|p| p.any()).unwrap_or(false) {}
            Ok(AttachEnd::GuestClosed)
        }
        Err(ConsoleError::Host(HostError::Detached)) => Ok(AttachEnd::Detached),
        Err(ConsoleError::Host(HostError::Closed)) => Ok(AttachEnd::TerminalClosed),
        Err(e) => Err(AttachError::Console(e)),
    };
    // Unmap and go to Closed, then let the front end close (it revokes its
    // page) before the directories go.
    let closed = back.close(xs);
    let _ = wait_for_state(xs0, &front, HANDSHAKE_TIMEOUT, |s| {
        s == XenbusState::Closed || s == XenbusState::Unknown
    });
    remove(xs0);
    let end = end?;
    closed?;
    Ok(end)
}

/// One attached session of a guest: the console (borrowed for the
/// session), the stop flag raised when the back end goes away, and the
/// attach count (1 for the first).
pub type Session<'a, B, E> = GuestConsole<Share<B>, E, &'a mut ConsoleFront<Share<B>, E>>;

/// The guest side: forever (until a session returns [`ShellExit::Exit`]),
/// waits for device `console/0` to appear, connects as its front end and
/// runs `session` on it until the back end goes away, then closes the
/// console (revoking its page) and waits for the next attach.
///
/// `xs` does the handshakes; `xs_watch`, a second client of this domain,
/// watches the back end during a session. A failed handshake or session
/// is reported to `on_error` and the guest waits for the next attach.
pub fn serve<B, E, T>(
    exporter: &Exporter<B>,
    evt: &Arc<E>,
    xs: &mut Client<T>,
    xs_watch: &mut Client<T>,
    mut session: impl FnMut(&mut Session<'_, B, E>, &AtomicBool, u32) -> Result<ShellExit, ConsoleError>,
    mut on_error: impl FnMut(&ConsoleError),
) -> Result<(), ConsoleError>
where
    B: GrantBackend,
    E: EventChannels,
    T: Transport + Send,
{
    let front_dir = frontend_path(exporter.domid(), DEVTYPE, DEVID);
    let mut attaches = 0u32;
    loop {
        // Wait for the toolstack's device (state Initialising).
        match wait_for_state(xs, &front_dir, Duration::from_secs(60), |s| {
            s == XenbusState::Initialising
        }) {
            Ok(_) => {}
            Err(ClientError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        }
        // A device without a usable `backend` key is not ours to serve yet.
        let back_dir = match read_str_opt(xs, &front_dir, "backend") {
            Ok(Some(v)) => v,
            Ok(None) | Err(DeviceError::BadKey { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut front = match connect_front(exporter, evt, xs, DEVID, HANDSHAKE_TIMEOUT) {
            Ok(f) => f,
            Err(e) => {
                on_error(&e);
                continue;
            }
        };
        attaches += 1;
        let stop = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                // The back end leaving (Closing, Closed, or its directory
                // gone with its domain) ends the session.
                while !done.load(Ordering::Acquire) {
                    match wait_for_state(xs_watch, &back_dir, Duration::from_millis(500), |s| {
                        s >= XenbusState::Closing || s == XenbusState::Unknown
                    }) {
                        Ok(_) => break,
                        Err(ClientError::Timeout) => {}
                        Err(_) => break,
                    }
                }
                stop.store(true, Ordering::Release);
            });
            let mut con = GuestConsole::new(front.console(), GUEST_TICK);
            let r = session(&mut con, &stop, attaches);
            done.store(true, Ordering::Release);
            r
        });
        let closed = front.close(xs, HANDSHAKE_TIMEOUT);
        if let Err(e) = &closed {
            on_error(e);
        }
        match r {
            Ok(ShellExit::Exit) => return Ok(()),
            Ok(ShellExit::Stopped) => {}
            // The back end went away mid-write, or broke the protocol: that
            // session is over, the guest goes on.
            Err(e) => on_error(&e),
        }
    }
}
