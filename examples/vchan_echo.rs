//! A vchan echo server and client.
//!
//! The platform is chosen at run time: on a Xen domain with `/dev/xen`
//! (dom0, or a guest with the gntalloc/gntdev/evtchn drivers) both ends run
//! in this domain over Linux's Xen devices (`xenshare-linux`), a vchan to
//! itself; anywhere else on the in-process emulator, between a guest (the
//! server) and dom0 (the client). The vchan code is the same generic
//! function for both.
//!
//! `cargo run -p xenshare-examples --example vchan_echo [-- --emulator]`

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use xenshare::grant::{Exporter, Importer};
use xenshare::platform::{EventChannels, ForeignMapper, GrantBackend};
use xenshare::store::client::Client;
use xenshare::store::Transport;
use xenshare::vchan::{client_init, server_init};
use xenshare::DomId;

type Res<T> = Result<T, Box<dyn Error>>;

/// One end's platform objects.
struct End<'a, G, E, T: Transport> {
    grants: &'a G,
    evt: Arc<E>,
    xs: Client<T>,
    dom: DomId,
}

/// Messages the client sends; the server sends each back.
const MESSAGES: &[&str] = &["hello", "vchan", "echo, over two shared rings"];

fn main() -> Res<()> {
    let forced_emulator = std::env::args().any(|a| a == "--emulator");
    if !forced_emulator && Path::new("/dev/xen").exists() {
        println!("/dev/xen is present: real Xen, both ends in this domain");
        on_xen()
    } else {
        println!("no /dev/xen (or --emulator): the in-process emulator");
        on_emulator()
    }
}

fn on_xen() -> Res<()> {
    let plat = xenshare_linux::LinuxPlatform::open()?;
    let me = plat.domid();
    let (exporter, importer) = (plat.exporter()?, plat.importer()?);
    let path = format!("/local/domain/{}/data/vchan/{}/echo", me.0, me.0);
    let server = End {
        grants: &exporter,
        evt: Arc::new(plat.evtchn()?),
        xs: plat.xenstore()?,
        dom: me,
    };
    let client = End {
        grants: &importer,
        evt: Arc::new(plat.evtchn()?),
        xs: plat.xenstore()?,
        dom: me,
    };
    echo(server, client, &path)
}

fn on_emulator() -> Res<()> {
    // A hypervisor, dom0, a guest that owns /local/domain/<guest>, and an
    // in-process xenstored.
    let m = xenshare_devices::machine::Machine::new(Default::default())?;
    let path = format!("/local/domain/{}/data/vchan/0/echo", m.guest.id().0);
    let server = End {
        grants: m.guest.exporter(),
        evt: m.guest.evtchn()?,
        xs: m.client(&m.guest),
        dom: m.guest.id(),
    };
    let client = End {
        grants: m.dom0.importer(),
        evt: m.dom0.evtchn()?,
        xs: m.client(&m.dom0),
        dom: m.dom0.id(),
    };
    echo(server, client, &path)
}

/// Publishes a vchan server at `path`, connects the client, runs the echo
/// server on a thread and checks every reply.
fn echo<B, M, E1, E2, T1, T2>(
    mut server: End<'_, Exporter<B>, E1, T1>,
    mut client: End<'_, Importer<M>, E2, T2>,
    path: &str,
) -> Res<()>
where
    B: GrantBackend + Send + Sync + 'static,
    B::Live: Send,
    M: ForeignMapper + Send + Sync + 'static,
    E1: EventChannels + Send + Sync + 'static,
    E2: EventChannels + Send + Sync + 'static,
    T1: Transport,
    T2: Transport,
{
    // The server grants its rings to the client and publishes ring-ref and
    // event-channel in XenStore; the client reads them and maps the rings.
    let mut srv = server_init(
        server.grants,
        &server.evt,
        &mut server.xs,
        client.dom,
        path,
        4096,
        4096,
    )?;
    let mut cli = client_init(client.grants, &client.evt, &mut client.xs, server.dom, path)?;
    println!("connected at {path}");
    // Every wait has an overall deadline.
    srv.set_timeout(Some(Duration::from_secs(10)));
    cli.set_timeout(Some(Duration::from_secs(10)));

    let echo_server = std::thread::spawn(move || -> Result<usize, String> {
        let mut buf = [0u8; 1024];
        let mut echoed = 0;
        loop {
            // 0 means the client closed and everything it sent was read.
            let n = srv.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(echoed);
            }
            let mut sent = 0;
            while sent < n {
                sent += srv.write(&buf[sent..n]).map_err(|e| e.to_string())?;
            }
            echoed += n;
        }
    });

    for msg in MESSAGES {
        let mut sent = 0;
        while sent < msg.len() {
            sent += cli.write(&msg.as_bytes()[sent..])?;
        }
        let mut reply = vec![0u8; msg.len()];
        let mut got = 0;
        while got < reply.len() {
            match cli.read(&mut reply[got..])? {
                0 => return Err("the server closed early".into()),
                n => got += n,
            }
        }
        println!(
            "client sent {msg:?}, got back {:?}",
            String::from_utf8_lossy(&reply)
        );
        if reply != msg.as_bytes() {
            return Err("the echo differs".into());
        }
    }
    cli.close();
    let echoed = echo_server.join().map_err(|_| "the server panicked")??;
    println!("server echoed {echoed} bytes and saw the client close");
    Ok(())
}
