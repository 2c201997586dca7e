//! XenBus: the front-end / back-end handshake carried by `state` keys.
//!
//! Each side writes its [`XenbusState`] as decimal ASCII into `<dir>/state`
//! and watches the peer's. This is the one XenBus helper every driver (blk,
//! net, console, vchan) and the toolstack code use:
//!
//! * **Key reads** with one strictness ([`parse_decimal`]: ASCII digits
//!   only — no sign, whitespace, NUL, `0x` or trailing garbage, no
//!   overflow): [`read_u32`] / [`read_u64`] / [`read_str`] /
//!   [`read_domid`] / [`read_port`] for keys that must be there,
//!   `*_opt` variants where absence means a default, [`read_bool`] for
//!   feature flags (`0` or `1`; absent is `false`). A missing or malformed
//!   key is [`DeviceError::BadKey`] naming the key.
//! * **States**: [`read_state`], [`write_state`] / [`switch_state`],
//!   [`XenbusState::is_closing`] and [`check_peer_live`] for a peer that
//!   left.
//! * **Waiting**: [`wait_state`], watch-based, with one overall deadline
//!   that wake-ups do not restart, and a stop flag ([`wait_for_state`] is
//!   the same wait with XenStore errors).
//! * **Retries**: [`XS_RETRIES`], the bound on redoing a conflicting
//!   transaction.
//! * **Toolstack**: [`create_device`], [`attach_device`], [`remove_device`].
//!
//! It lives under [`crate::store`] because it is XenStore conventions on top
//! of the client, used by every device module; a top-level module would
//! only have moved 36 import paths.

use alloc::format;
use alloc::string::String;
use core::fmt;

use core::time::Duration;

use super::client::{Client, ClientError, Transport};
use crate::deadline::Deadline;
use crate::error::DeviceError;
use crate::{DomId, Port};

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

    /// Parses a `state` value with the one strictness of [`parse_decimal`]
    /// (digits only: no sign, whitespace, NUL or trailing garbage). An empty
    /// value is Unknown, as a missing key is.
    pub fn parse(raw: &[u8]) -> Result<XenbusState, BadState> {
        if raw.is_empty() {
            return Ok(XenbusState::Unknown);
        }
        parse_decimal(raw)
            .and_then(|v| u32::try_from(v).ok())
            .and_then(XenbusState::from_u32)
            .ok_or_else(|| BadState(String::from_utf8_lossy(raw).into_owned()))
    }

    /// Whether this is Closing or Closed: the peer is tearing the device
    /// down (or has), and a connection must not go on.
    pub const fn is_closing(self) -> bool {
        matches!(self, XenbusState::Closing | XenbusState::Closed)
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

/// How many times a XenStore transaction of a driver or the toolstack is
/// redone when its commit conflicts (`EAGAIN`) before giving up with
/// [`ClientError::TooManyRetries`]: the one retry policy of every driver.
pub const XS_RETRIES: u32 = 16;

/// Parses a decimal number as a peer writes it in XenStore (xen-abi.md:
/// values are plain decimal ASCII, read back without a NUL). This is the one
/// strictness every driver applies to a peer's numeric keys: ASCII digits
/// only, 1 to 20 of them, no overflow; no sign (`-`, `+`), no `0x`, no
/// whitespace anywhere, no NUL, nothing after the digits.
pub fn parse_decimal(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // All ASCII digits, so valid UTF-8; `parse` catches the overflow.
    core::str::from_utf8(raw).ok()?.parse().ok()
}

/// [`parse_decimal`], then within `u32`.
pub fn parse_u32(raw: &[u8]) -> Option<u32> {
    parse_decimal(raw).and_then(|v| u32::try_from(v).ok())
}

/// Parses a flag (`feature-*`, `request-rx-copy`, `online`): exactly `0` or
/// `1`.
pub fn parse_bool(raw: &[u8]) -> Option<bool> {
    match parse_decimal(raw)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn key_path(dir: &str, key: &str) -> String {
    format!("{dir}/{key}")
}

/// Reads `<dir>/<key>` as text; `None` if the key is missing. The value must
/// be UTF-8 and not empty; it is returned exactly as stored (no trimming).
pub fn read_str_opt<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<Option<String>, DeviceError> {
    let Some(v) = xs.try_read(&key_path(dir, key))? else {
        return Ok(None);
    };
    if v.is_empty() {
        return Err(DeviceError::bad_key(key, "empty"));
    }
    String::from_utf8(v)
        .map(Some)
        .map_err(|_| DeviceError::bad_key(key, "not UTF-8"))
}

/// [`read_str_opt`] for a key that must be there.
pub fn read_str<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<String, DeviceError> {
    read_str_opt(xs, dir, key)?.ok_or_else(|| DeviceError::bad_key(key, "missing"))
}

/// Reads `<dir>/<key>` as a decimal `u64` ([`parse_decimal`]); `None` if
/// the key is missing.
pub fn read_u64_opt<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<Option<u64>, DeviceError> {
    match xs.try_read(&key_path(dir, key))? {
        None => Ok(None),
        Some(v) => parse_decimal(&v)
            .map(Some)
            .ok_or_else(|| DeviceError::bad_key(key, "not a decimal number")),
    }
}

/// [`read_u64_opt`] for a key that must be there.
pub fn read_u64<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<u64, DeviceError> {
    read_u64_opt(xs, dir, key)?.ok_or_else(|| DeviceError::bad_key(key, "missing"))
}

/// Reads `<dir>/<key>` as a decimal `u32`; `None` if the key is missing. A
/// number that does not fit is "out of range".
pub fn read_u32_opt<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<Option<u32>, DeviceError> {
    match read_u64_opt(xs, dir, key)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| DeviceError::bad_key(key, "out of range")),
    }
}

/// [`read_u32_opt`] for a key that must be there.
pub fn read_u32<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<u32, DeviceError> {
    read_u32_opt(xs, dir, key)?.ok_or_else(|| DeviceError::bad_key(key, "missing"))
}

/// Reads a flag ([`parse_bool`]); a missing key is `false`, the default of
/// every feature key.
pub fn read_bool<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<bool, DeviceError> {
    match xs.try_read(&key_path(dir, key))? {
        None => Ok(false),
        Some(v) => parse_bool(&v).ok_or_else(|| DeviceError::bad_key(key, "not 0 or 1")),
    }
}

/// Reads a domain id (`backend-id`, `frontend-id`): a decimal that is a
/// real domain (not `DOMID_SELF` or another special id).
pub fn read_domid<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<DomId, DeviceError> {
    let v = read_u64(xs, dir, key)?;
    u16::try_from(v)
        .ok()
        .map(DomId)
        .filter(|d| d.is_real())
        .ok_or_else(|| DeviceError::bad_key(key, "not a domain id"))
}

/// Reads an event channel port a peer published: a decimal `u32` that is
/// not 0 (port 0 is never a valid channel).
pub fn read_port<T: Transport>(
    xs: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<Port, DeviceError> {
    match read_u32(xs, dir, key)? {
        0 => Err(DeviceError::bad_key(key, "not a valid port")),
        p => Ok(Port(p)),
    }
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

/// Moves this end to `state` (writes `<dir>/state`): [`write_state`] with a
/// driver's error type.
pub fn switch_state<T: Transport>(
    c: &mut Client<T>,
    dir: &str,
    state: XenbusState,
) -> Result<(), DeviceError> {
    Ok(write_state(c, dir, state)?)
}

/// Fails with [`DeviceError::PeerState`] if the peer is Closing or Closed:
/// what every handshake does with a peer that left.
pub fn check_peer_live(state: XenbusState) -> Result<XenbusState, DeviceError> {
    if state.is_closing() {
        return Err(DeviceError::PeerState(state));
    }
    Ok(state)
}

/// The one wait for a peer's state: watches `<dir>/state` and returns the
/// first state `accept` takes (`Ok(true)`); `accept` may also fail, which
/// ends the wait with its error.
///
/// The deadline covers the whole wait (`None`: no bound) and is not
/// restarted by watch events, so a peer that keeps rewriting its state
/// cannot keep us waiting. `stop` is polled between wait slices of at most
/// 20 ms; when it says so the wait ends with [`DeviceError::Closed`]. A
/// timeout is [`DeviceError::Timeout`]. The state is re-read after every
/// event, since events only say "something changed". Other watch events
/// that arrive meanwhile are dropped, so use a client dedicated to the
/// handshake (or one without other watches).
pub fn wait_state<T, E>(
    xs: &mut Client<T>,
    dir: &str,
    timeout: Option<Duration>,
    stop: &dyn Fn() -> bool,
    mut accept: impl FnMut(XenbusState) -> Result<bool, E>,
) -> Result<XenbusState, E>
where
    T: Transport,
    E: From<DeviceError>,
{
    const SLICE: Duration = Duration::from_millis(20);
    let key = state_key(dir);
    let token = format!("xenbus-wait:{key}");
    xs.watch(&key, token.as_bytes())
        .map_err(|e| E::from(DeviceError::from(e)))?;
    let mut deadline = Deadline::new(timeout);
    let result = (|| loop {
        let s = read_state(xs, dir).map_err(|e| E::from(DeviceError::from(e)))?;
        if accept(s)? {
            return Ok(s);
        }
        loop {
            if stop() {
                return Err(E::from(DeviceError::Closed));
            }
            let Some(slice) = deadline.slice(SLICE) else {
                return Err(E::from(DeviceError::Timeout));
            };
            let ev = xs
                .next_event(Some(slice))
                .map_err(|e| E::from(DeviceError::from(e)))?;
            deadline.charge(slice);
            if let Some(ev) = ev {
                if ev.token == token.as_bytes() {
                    break;
                }
            }
        }
    })();
    // The wait's outcome matters more than a failed clean-up.
    let _ = xs.unwatch(&key, token.as_bytes());
    result
}

/// [`wait_state`] for callers that speak XenStore errors (tests, the
/// toolstack): waits at most `timeout` until `accept` holds and returns the
/// accepted state; a timeout is [`ClientError::Timeout`].
pub fn wait_for_state<T: Transport>(
    c: &mut Client<T>,
    dir: &str,
    timeout: Duration,
    mut accept: impl FnMut(XenbusState) -> bool,
) -> Result<XenbusState, ClientError> {
    wait_state(c, dir, Some(timeout), &|| false, |s| {
        Ok::<_, DeviceError>(accept(s))
    })
    .map_err(|e| match e {
        DeviceError::Store(e) => e,
        _ => ClientError::Timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_strict() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"42"), Some(42));
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
            // One strictness: no whitespace or NUL anywhere either.
            b" 42",
            b"42 ",
            b"42\n",
            b"\t42",
            b"42\0",
            b"\x0042",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
            assert_eq!(parse_u32(bad), None, "{bad:?}");
            assert_eq!(parse_bool(bad), None, "{bad:?}");
            assert!(
                XenbusState::parse(bad).is_err() || bad.is_empty(),
                "{bad:?}"
            );
        }
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_bool(b"0"), Some(false));
        assert_eq!(parse_bool(b"1"), Some(true));
        assert_eq!(parse_bool(b"2"), None);
        assert_eq!(parse_bool(b"01"), Some(true));
    }

    proptest::proptest! {
        /// The parser agrees with a model of the rule: accepted exactly
        /// when the value is 1..=20 ASCII digits whose number fits a u64,
        /// and then it is that number.
        #[test]
        fn decimal_matches_its_model(raw in proptest::collection::vec(
            proptest::sample::select(b"0123456789 +-x\0\n\xff".to_vec()), 0..24)
        ) {
            let model = if !raw.is_empty() && raw.len() <= 20 && raw.iter().all(u8::is_ascii_digit) {
                raw.iter().try_fold(0u64, |a, &d| a.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            } else {
                None
            };
            proptest::prop_assert_eq!(parse_decimal(&raw), model);
        }

        /// Every u64 written as plain decimal reads back as itself.
        #[test]
        fn decimal_round_trips(v: u64) {
            proptest::prop_assert_eq!(parse_decimal(format!("{v}").as_bytes()), Some(v));
        }
    }

    #[test]
    fn states_parse_and_format() {
        for v in 0..=8u32 {
            let s = XenbusState::from_u32(v).unwrap();
            assert_eq!(s.as_u32(), v);
            assert_eq!(XenbusState::parse(format!("{s}").as_bytes()), Ok(s));
        }
        assert!(
            XenbusState::parse(b"4\0").is_err(),
            "one strictness: no NUL"
        );
        assert!(
            XenbusState::parse(b" 4").is_err(),
            "one strictness: no space"
        );
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
    c.transaction(XS_RETRIES, |tx| {
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
