//! The client workload of `xenshare bench xenstore`, shared with the Xen
//! lab's side-by-side test so that xenshare's daemon, C xenstored and
//! oxenstored are measured with the same client code: `clients` threads,
//! each with its own connection and one request in flight, first `ops`
//! writes of a 16-byte value, then `ops` reads, over 64 keys per client
//! under a prefix.

use std::time::Instant;

use xenshare::store::{Client, Transport};

/// Write and read rates of one run of [`run_clients`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Writes per second, over all clients.
    pub write_ops: f64,
    /// Reads per second, over all clients.
    pub read_ops: f64,
}

/// Keys each client cycles through.
pub const KEYS_PER_CLIENT: u64 = 64;

/// The key client `client` uses for its `op`-th operation under `prefix`.
pub fn key(prefix: &str, client: usize, op: u64) -> String {
    format!("{prefix}/c{client}/k{}", op % KEYS_PER_CLIENT)
}

/// Connects `clients` clients with `connect`, then runs `ops` writes per
/// client on all of them at once, then `ops` reads; returns the aggregate
/// rates. Any failed request ends the run with its error.
pub fn run_clients<T, F>(clients: u64, ops: u64, prefix: &str, connect: F) -> Result<Rates, String>
where
    T: Transport + Send + 'static,
    F: Fn() -> Result<Client<T>, String>,
{
    let cs: Vec<Client<T>> = (0..clients).map(|_| connect()).collect::<Result<_, _>>()?;
    let total = (clients * ops) as f64;
    let (w, cs) = phase(cs, ops, prefix, true)?;
    let (r, _) = phase(cs, ops, prefix, false)?;
    Ok(Rates {
        write_ops: total / w,
        read_ops: total / r,
    })
}

/// One phase on every client at once; returns its duration in seconds and
/// the clients.
fn phase<T: Transport + Send + 'static>(
    cs: Vec<Client<T>>,
    ops: u64,
    prefix: &str,
    write: bool,
) -> Result<(f64, Vec<Client<T>>), String> {
    let t = Instant::now();
    let handles: Vec<_> = cs
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let prefix = prefix.to_string();
            std::thread::spawn(move || -> Result<Client<T>, String> {
                let value = [b'v'; 16];
                for j in 0..ops {
                    let k = key(&prefix, i, j);
                    if write {
                        c.write(&k, &value).map_err(|e| format!("write {k}: {e}"))?;
                    } else {
                        c.read(&k).map_err(|e| format!("read {k}: {e}"))?;
                    }
                }
                Ok(c)
            })
        })
        .collect();
    let mut back = Vec::new();
    let mut err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(c)) => back.push(c),
            Ok(Err(e)) => err = err.or(Some(e)),
            Err(_) => err = err.or(Some("client thread panicked".to_string())),
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok((t.elapsed().as_secs_f64().max(1e-9), back)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inproc, Config, Daemon};
    use xenshare::DomId;

    #[test]
    fn workload_writes_then_reads_every_key_of_every_client() {
        let d = Daemon::new(Config::default());
        let r = run_clients(3, 100, "/wl", || Ok(inproc::client(&d, DomId(0)))).unwrap();
        assert!(r.write_ops > 0.0 && r.read_ops > 0.0);
        let mut c = inproc::client(&d, DomId(0));
        for i in 0..3 {
            assert_eq!(c.directory(&format!("/wl/c{i}")).unwrap().len(), 64);
            assert_eq!(c.read(&key("/wl", i, 5)).unwrap(), [b'v'; 16]);
        }
        assert!(c.directory("/wl/c3").is_err());
    }
}
