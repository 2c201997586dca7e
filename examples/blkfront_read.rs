//! Read a block device through blkfront.
//!
//! dom0 serves a raw image file with a blkback thread; the guest's blkfront
//! connects through XenBus, reads sectors, and closes. The image is a
//! temporary file this program writes first, so it knows what the guest
//! must read.
//!
//! `cargo run -p xenshare-examples --example blkfront_read`

use std::error::Error;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use xenshare::blk::{BackConfig, FrontConfig};
use xenshare_devices::blk::{guest_config, BlkWorld, FileStorage};

type Res<T> = Result<T, Box<dyn Error>>;

/// xvda, as Linux numbers it.
const XVDA: u32 = 51712;
const IMAGE_SIZE: u64 = 4 << 20;
const MESSAGE: &[u8] = b"read through a grant-mapped blkif ring";
const MESSAGE_AT: u64 = 1 << 20;

/// Removes the temporary image when dropped, also on an early return.
struct TempImage(PathBuf);
impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() -> Res<()> {
    let image = TempImage(
        std::env::temp_dir().join(format!("xenshare-example-blk-{}.img", std::process::id())),
    );
    {
        let file = std::fs::File::create(&image.0)?;
        file.set_len(IMAGE_SIZE)?;
        file.write_all_at(&[0x55, 0xAA], 510)?; // a boot signature
        file.write_all_at(MESSAGE, MESSAGE_AT)?;
    }

    // The emulated machine: dom0, a guest, xenstored. The toolstack creates
    // the vbd's front and back directories; dom0 serves the image read-only.
    let world = BlkWorld::new(guest_config())?;
    world.create_vbd(XVDA)?;
    let storage = FileStorage::open(&image.0, true)?;
    let backend = world.spawn_backend(storage, BackConfig::new(world.guest.id(), XVDA))?;

    // The guest: blkfront connects (grants its ring, publishes ring-ref and
    // event-channel, waits for the back end's Connected) and reads.
    let mut front = world.frontend(FrontConfig::new(XVDA))?;
    let mut xs = world.client(&world.guest);
    let result = (|| -> Res<()> {
        let mut disk = front.connect(&mut xs)?;
        let info = *disk.info();
        println!(
            "xvda: {} sectors of {} bytes ({} MiB)",
            info.sectors,
            info.sector_size,
            info.size_bytes() >> 20
        );
        let mut sector0 = vec![0u8; 512];
        disk.read_at(0, &mut sector0)?;
        println!(
            "sector 0 ends with {:02x} {:02x}",
            sector0[510], sector0[511]
        );
        // Requests are whole sectors at sector-aligned offsets.
        let mut sector = vec![0u8; 512];
        disk.read_at(MESSAGE_AT, &mut sector)?;
        let text = &sector[..MESSAGE.len()];
        println!("at 1 MiB: {:?}", String::from_utf8_lossy(text));
        disk.close(&mut xs)?;
        if sector0[510..] != [0x55, 0xAA] || text != MESSAGE {
            return Err("the guest read something else than the image holds".into());
        }
        Ok(())
    })();
    let (_back, runs) = backend.stop()?;
    println!("back end served {} connection(s)", runs.len());
    result
}
