//! xenshare-devices: the `std` side of the split drivers.
//!
//! The protocols (blkif, netif, console rings and their XenBus handshakes)
//! live in the core crate, `no_std`, generic over small storage / network /
//! terminal traits. This crate implements those traits on a Linux host —
//! a raw image file for block back ends, a TAP interface for net back ends,
//! a pty or stdio for console back ends — and carries the guest-side TCP/IP
//! stack (smoltcp) for net front ends.
//!
//! # Example
//!
//! A file-backed disk on the emulator: dom0 serves an image with blkback, the
//! guest reads and writes it through blkfront.
//!
//! ```
//! use xenshare::blk::{BackConfig, FrontConfig};
//! use xenshare_devices::blk::{guest_config, BlkWorld, FileStorage};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let image = std::env::temp_dir().join(format!("xenshare-doc-{}.img", std::process::id()));
//! let world = BlkWorld::new(guest_config())?;
//! world.create_vbd(51712)?; // xvda: the toolstack's XenBus directories
//! let storage = FileStorage::create(&image, 1 << 20)?;
//! let backend = world.spawn_backend(storage, BackConfig::new(world.guest.id(), 51712))?;
//!
//! let mut front = world.frontend(FrontConfig::new(51712))?;
//! let mut xs = world.client(&world.guest);
//! let mut disk = front.connect(&mut xs)?;
//! disk.write_at(4096, &[7u8; 512])?;
//! let mut back = [0u8; 512];
//! disk.read_at(4096, &mut back)?;
//! assert_eq!(back, [7u8; 512]);
//! disk.close(&mut xs)?;
//! backend.stop()?;
//! std::fs::remove_file(&image)?;
//! # Ok(())
//! # }
//! ```

pub mod blk;
pub mod console;
pub mod machine;
pub mod net;
