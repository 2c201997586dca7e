//! `xenshare grants`: print domains' grant tables, as the host sees them.

use std::path::PathBuf;

use xenshare::grant::FlagsDisplay;
use xenshare::DomId;

/// Options of `xenshare grants`.
#[derive(Debug, clap::Args)]
pub struct GrantsArgs {
    /// Only this domain (default: every joined domain).
    #[arg(long, value_name = "N")]
    pub domid: Option<u16>,
    /// The host daemon's socket (default: $XENSHARE_HOST).
    #[arg(long, value_name = "PATH")]
    pub host: Option<PathBuf>,
}

/// Prints the tables.
pub fn run(a: GrantsArgs) -> Result<(), String> {
    let host = super::host::host_path(a.host)?;
    let reports =
        xenshare_host::grant_reports(&host, a.domid.map(DomId)).map_err(|e| e.to_string())?;
    if reports.is_empty() {
        println!("no domains have joined the host");
    }
    for r in reports {
        println!(
            "domain {}: {} active entries, {} pinned by peers, {} quarantined, {} pages in use, {} grants mapped",
            r.domid.0,
            r.entries.len(),
            r.pins.len(),
            r.quarantined.len(),
            r.used_pages,
            r.mapped
        );
        println!(
            "  {:>6}  {:<30} {:>5}  {:>10}  {:<11}  mapped-by",
            "ref", "flags", "peer", "frame", "state"
        );
        for e in &r.entries {
            let pins: Vec<String> = r
                .pins
                .iter()
                .filter(|p| p.gref == e.gref)
                .map(|p| format!("d{} (r{} w{})", p.mapper.0, p.readers, p.writers))
                .collect();
            let state = if r.quarantined.contains(&e.gref) {
                "quarantined"
            } else {
                "live"
            };
            println!(
                "  {:>6}  {:<30} {:>5}  {:>#10x}  {:<11}  {}",
                e.gref.0,
                FlagsDisplay(e.flags).to_string(),
                e.domid.0,
                e.frame,
                state,
                if pins.is_empty() {
                    "-".to_string()
                } else {
                    pins.join(", ")
                }
            );
        }
    }
    Ok(())
}
