//! One module per subcommand.

pub mod bench;
pub mod blkback;
pub mod console;
pub mod demo;
pub mod demo_full;
pub mod grants;
pub mod host;
pub mod netback;
pub mod shutdown;
pub mod vchan;
pub mod xenstored;
