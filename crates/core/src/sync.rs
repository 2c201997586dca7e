//! The lock used for the core's small critical sections (ref allocator,
//! quarantine). Uncontended it is one compare-and-swap; the sections are a few
//! instructions long, so a spin lock is the right tool and keeps the core
//! `no_std`.

pub(crate) type Mutex<T> = spin::Mutex<T>;
