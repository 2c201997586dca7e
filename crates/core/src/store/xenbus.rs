//! XenBus: the front-end / back-end handshake carried by `state` keys.
//!
//! Each side writes its [`XenbusState`] as decimal ASCII into `<dir>/state`
//! and watches the peer's. The helpers here name the standard directories,
//! read and write the key, and wait for the peer through a watch.

use alloc::format;
use alloc::string::String;
use core::fmt;

use super::client::{Client, ClientError, Transport};
use crate::DomId;

/// `enum xenbus_state` (xen-abi.md 8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XenbusState {
    /// 0: also what a missing key means.
    Unknown,
    /// 1
    Initialising,
    /// 2: early init done; waiting for the peer or hotplug.
    InitWait,
    /// 3: transport parameters published.
    Initialised,
    /// 4
    Connected,
    /// 5: tear-down requested.
    Closing,
    /// 6
    Closed,
    /// 7
    Reconfiguring,
    /// 8
    Reconfigured,
}

/// A `state` value that is not a number 0..=8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid xenbus state {0:?}")]
pub struct BadState(pub String);

impl XenbusState {
    /// The numeric value.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The state for a number.
    pub const fn from_u32(v: u32) -> Option<XenbusState> {
        use XenbusState::*;
        Some(match v {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return None,
        })
    }

    /// Parses a `state` value. Surrounding whitespace and a trailing NUL
    /// (some writers include one) are tolerated; an empty value is Unknown.
    pub fn parse(raw: &[u8]) -> Result<XenbusState, BadState> {
        let bad = || BadState(String::from_utf8_lossy(raw).into_owned());
        let s = core::str::from_utf8(raw).map_err(|_| bad())?;
        let s = s.trim_end_matches('\0').trim();
        if s.is_empty() {
            return Ok(XenbusState::Unknown);
        }
        s.parse::<u32>()
            .ok()
            .and_then(XenbusState::from_u32)
            .ok_or_else(bad)
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}

/// `/local/domain/<domid>/device/<devtype>/<devid>`: a front end's directory.
pub fn frontend_path(domid: DomId, devtype: &str, devid: u32) -> String {
    format!("/local/domain/{}/device/{devtype}/{devid}", domid.0)
}

/// `/local/domain/<backend>/backend/<devtype>/<frontend>/<devid>`: a back
/// end's directory.
pub fn backend_path(backend: DomId, devtype: &str, frontend: DomId, devid: u32) -> String {
    format!(
        "/local/domain/{}/backend/{devtype}/{}/{devid}",
        backend.0, frontend.0
    )
}

/// Parses a decimal number as a peer writes it in XenStore: ASCII digits
/// only (no sign, no `0x`, no inner spaces), surrounding whitespace and
/// trailing NULs tolerated, at most 20 digits and no overflow. Every driver
/// reads a peer's numeric keys (ring refs, ports, orders, queue counts)
/// through this one function, so all of them refuse the same hostile forms.
pub fn parse_decimal(raw: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(raw).ok()?;
    let s = s.trim_end_matches('\0').trim();
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn state_key(dir: &str) -> String {
    format!("{dir}/state")
}

/// Reads `<dir>/state`; a missing key is [`XenbusState::Unknown`].
pub fn read_state<T: Transport>(c: &mut Client<T>, dir: &str) -> Result<XenbusState, ClientError> {
    match c.try_read(&state_key(dir))? {
        None => Ok(XenbusState::Unknown),
        Some(v) => XenbusState::parse(&v).map_err(|_| ClientError::Protocol("bad xenbus state")),
    }
}

/// Writes `<dir>/state`.
pub fn write_state<T: Transport>(
    c: &mut Client<T>,
    dir: &str,
    state: XenbusState,
) -> Result<(), ClientError> {
    c.write(&state_key(dir), format!("{state}").as_bytes())
}

/// Waits until `accept` holds for the state in `<dir>/state`, using a watch
/// on the key, for at most `timeout`. Returns the accepted state.
///
/// Other watch events that arrive meanwhile are dropped, so use a client
/// dedicated to the handshake (or one without other watches).
#[cfg(feature = "std")]
pub fn wait_for_state<T: Transport>(
    c: &mut Client<T>,
    dir: &str,
    timeout: core::time::Duration,
    mut accept: impl FnMut(XenbusState) -> bool,
) -> Result<XenbusState, ClientError> {
    let key = state_key(dir);
    let token = format!("xenbus-wait:{key}");
    let deadline = std::time::Instant::now() + timeout;
    c.watch(&key, token.as_bytes())?;
    let result = (|| loop {
        let s = read_state(c, dir)?;
        if accept(s) {
            return Ok(s);
        }
        // Wait for a change of the key; the state is re-read, not taken from
        // the event, since events only say "something changed".
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            match c.next_event(Some(left))? {
                None => return Err(ClientError::Timeout),
                Some(ev) if ev.token == token.as_bytes() => break,
                Some(_) => {}
            }
        }
    })();
    // The wait's outcome matters more than a failed clean-up.
    let _ = c.unwatch(&key, token.as_bytes());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_strict() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"42"), Some(42));
        assert_eq!(parse_decimal(b" 42\n"), Some(42));
        assert_eq!(parse_decimal(b"42\0"), Some(42));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"007"), Some(7));
        for bad in [
            &b""[..],
            b" ",
            b"\0",
            b"+1",
            b"-1",
            b"0x10",
            b"1 2",
            b"1e3",
            b"4294967296a",
            b"18446744073709551616",
            b"000000000000000000001",
            b"\xff",
            b"\xd9\xa3",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn states_parse_and_format() {
        for v in 0..=8u32 {
            let s = XenbusState::from_u32(v).unwrap();
            assert_eq!(s.as_u32(), v);
            assert_eq!(XenbusState::parse(format!("{s}").as_bytes()), Ok(s));
        }
        assert_eq!(XenbusState::parse(b"4\0"), Ok(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b""), Ok(XenbusState::Unknown));
        assert!(XenbusState::parse(b"9").is_err());
        assert!(XenbusState::parse(b"x").is_err());
        assert!(XenbusState::parse(b"-1").is_err());
    }

    #[test]
    fn standard_paths() {
        assert_eq!(
            frontend_path(DomId(5), "vif", 0),
            "/local/domain/5/device/vif/0"
        );
        assert_eq!(
            backend_path(DomId(0), "vbd", DomId(5), 51712),
            "/local/domain/0/backend/vbd/5/51712"
        );
    }
}

/// A split device as the toolstack declares it: both directories, linked,
/// with libxl's permissions, each in state Initialising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec<'a> {
    /// Device type (`vbd`, `vif`, `console`, ...).
    pub devtype: &'a str,
    /// Device id under that type.
    pub devid: u32,
    /// The guest running the front end.
    pub frontend: DomId,
    /// The domain running the back end.
    pub backend: DomId,
    /// Extra toolstack keys in the front-end directory (e.g. `mac`).
    pub front_keys: &'a [(&'a str, &'a str)],
    /// Extra toolstack keys in the back-end directory (e.g. `params`).
    pub back_keys: &'a [(&'a str, &'a str)],
}

/// The directories [`create_device`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePaths {
    /// The front end's directory.
    pub front: String,
    /// The back end's directory.
    pub back: String,
}

/// The toolstack's part of a device (what `xl` does): creates both
/// directories in one transaction with `backend`/`backend-id` and
/// `frontend`/`frontend-id`/`online` links, owner-only permissions plus read
/// access for the peer, and `state` = Initialising on both sides. Needs a
/// privileged (dom0) client.
pub fn create_device<T: Transport>(
    c: &mut Client<T>,
    spec: &DeviceSpec<'_>,
) -> Result<DevicePaths, ClientError> {
    make_device(c, spec, spec.devtype, false)
}

/// [`create_device`] as a toolstack attaching a device to a running guest
/// does it: the back-end directory lives under `backend_type` (a private
/// type such as `xenshare-vbd` keeps a loaded kernel back end from claiming
/// the device), the guest's `device` directory is created (owned by dom0,
/// readable by the guest) if it is missing, and a device whose front- or
/// back-end directory already exists is refused. Everything is one
/// transaction, so a front end's watch sees the device complete.
pub fn attach_device<T: Transport>(
    c: &mut Client<T>,
    spec: &DeviceSpec<'_>,
    backend_type: &str,
) -> Result<DevicePaths, ClientError> {
    make_device(c, spec, backend_type, true)
}

/// Removes both directories of a device (what the toolstack does after a
/// detach). Missing nodes are not an error.
pub fn remove_device<T: Transport>(
    c: &mut Client<T>,
    paths: &DevicePaths,
) -> Result<(), ClientError> {
    for p in [&paths.front, &paths.back] {
        match c.rm(p) {
            Ok(()) | Err(ClientError::Xs(super::XsError::ENOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn make_device<T: Transport>(
    c: &mut Client<T>,
    spec: &DeviceSpec<'_>,
    backend_type: &str,
    attach: bool,
) -> Result<DevicePaths, ClientError> {
    use super::perms::Perms;
    let front = frontend_path(spec.frontend, spec.devtype, spec.devid);
    let back = backend_path(spec.backend, backend_type, spec.frontend, spec.devid);
    let device_dir = format!("/local/domain/{}/device", spec.frontend.0);
    let (fperm, bperm, dperm) = (
        Perms::owned_by_readable_by(spec.frontend, spec.backend),
        Perms::owned_by_readable_by(spec.backend, spec.frontend),
        Perms::owned_by_readable_by(DomId::DOM0, spec.frontend),
    );
    c.transaction(16, |tx| {
        if attach {
            if tx.try_read(&device_dir)?.is_none() {
                tx.mkdir(&device_dir)?;
                tx.set_perms(&device_dir, &dperm)?;
            }
            if tx.try_read(&front)?.is_some() || tx.try_read(&back)?.is_some() {
                return Err(ClientError::Protocol(
                    "the device already exists (detach it first)",
                ));
            }
        }
        tx.mkdir(&front)?;
        tx.set_perms(&front, &fperm)?;
        tx.write(&format!("{front}/backend"), back.as_bytes())?;
        tx.write(
            &format!("{front}/backend-id"),
            format!("{}", spec.backend.0).as_bytes(),
        )?;
        tx.write(&format!("{front}/state"), b"1")?;
        for (k, v) in spec.front_keys {
            tx.write(&format!("{front}/{k}"), v.as_bytes())?;
        }
        tx.mkdir(&back)?;
        tx.set_perms(&back, &bperm)?;
        tx.write(&format!("{back}/frontend"), front.as_bytes())?;
        tx.write(
            &format!("{back}/frontend-id"),
            format!("{}", spec.frontend.0).as_bytes(),
        )?;
        tx.write(&format!("{back}/online"), b"1")?;
        tx.write(&format!("{back}/state"), b"1")?;
        for (k, v) in spec.back_keys {
            tx.write(&format!("{back}/{k}"), v.as_bytes())?;
        }
        Ok(())
    })?;
    Ok(DevicePaths { front, back })
}
