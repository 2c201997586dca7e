//! `xenshare`: the command-line front door — demo, benchmarks, daemons and
//! inspection tools. A thin shell over the libraries: every subcommand's
//! logic lives in a library crate; this binary parses arguments and prints.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod json;

/// Xen's inter-domain shared-memory stack, with a safe grant API.
#[derive(Parser)]
#[command(name = "xenshare", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot two emulated domains, share pages, and replay MirageOS MSA02
    /// (`--full`: a guest with console, disk and network up).
    Demo {
        /// Also bring up a guest with its PV console, a disk and a network.
        #[arg(long)]
        full: bool,
    },
    /// Attach to an emulated guest's PV console, the way `xl console` works.
    Console(cmd::console::ConsoleArgs),
    /// Run a benchmark.
    #[command(subcommand)]
    Bench(cmd::bench::Bench),
    /// Run a XenStore daemon on a Unix socket, in the foreground.
    Xenstored(cmd::xenstored::XenstoredArgs),
    /// Run the multi-process emulator (hypervisor + xenstored) in the foreground.
    Host(cmd::host::HostArgs),
    /// Run a program as an emulated domain of a running host daemon.
    Exec(cmd::host::ExecArgs),
    /// Pipe stdin/stdout over a vchan between two domain processes.
    #[command(subcommand)]
    Vchan(cmd::vchan::VchanCmd),
    /// Print domains' grant tables, as the host daemon sees them.
    Grants(cmd::grants::GrantsArgs),
    /// On a real Xen dom0: serve a raw image to a guest's Linux blkfront
    /// from userspace (instead of the kernel's xen-blkback).
    Blkback(cmd::blkback::BlkbackArgs),
    /// On a real Xen dom0: serve a guest's Linux netfront from a TAP
    /// interface in userspace (instead of the kernel's xen-netback).
    Netback(cmd::netback::NetbackArgs),
}

/// Diagnostics of the libraries (`tracing` events) go to stderr, filtered
/// by `RUST_LOG` (e.g. `RUST_LOG=debug`, `RUST_LOG=xenstored=info,warn`);
/// by default warnings and errors plus `info` of the daemons. Colours only
/// on a terminal. User output (results, the vchan byte stream) never goes
/// through it.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,xenstored=info,xenshare_host=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Demo { full: false } => cmd::demo::run(),
        Command::Demo { full: true } => cmd::demo_full::run(),
        Command::Console(a) => cmd::console::run(a),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Xenstored(a) => cmd::xenstored::run(a),
        Command::Host(a) => cmd::host::run(a),
        Command::Exec(a) => cmd::host::exec(a),
        Command::Vchan(c) => cmd::vchan::run(c),
        Command::Grants(a) => cmd::grants::run(a),
        Command::Blkback(a) => cmd::blkback::run(a),
        Command::Netback(a) => cmd::netback::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenshare: error: {e}");
            ExitCode::FAILURE
        }
    }
}
