//! Loom model of the vchan's index and notification protocol.
//!
//! A writer and a reader move messages through a one-slot ring with the
//! functions the vchan itself calls (`xenshare::vchan::notify`), on loom
//! atomics and fences. Each side waits as the vchan does (check, ask the
//! peer for a notification, check again, sleep on its event channel), the
//! event channels are loom `Notify`s (a lost wake-up is a deadlock, which
//! loom reports), and the slot is a loom `UnsafeCell` (a slot read before
//! its write is visible, or overwritten while being read, is a data race,
//! which loom reports too). The writer publishes with a batch: two
//! messages under one index update, as a batching vchan does.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p xenshare --release --test loom_vchan`
#![cfg(loom)]

mod loom_common;

use std::sync::atomic::Ordering;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, AtomicU8};
use loom::sync::{Arc, Notify};
use loom::thread;
use loom_common::Idx;
use xenshare::ring::index::IndexCell;
use xenshare::vchan::notify::{self, FlagCell};

const WRITE: u8 = 1;
const READ: u8 = 2;

struct Flag(AtomicU8);

impl FlagCell for Flag {
    fn load(&self, order: Ordering) -> u8 {
        self.0.load(order)
    }
    fn fetch_or(&self, bits: u8, order: Ordering) -> u8 {
        self.0.fetch_or(bits, order)
    }
    fn fetch_and(&self, bits: u8, order: Ordering) -> u8 {
        self.0.fetch_and(bits, order)
    }
}

/// The shared page of one ring: indices, the two notify bytes (each set by
/// the other side), the slots, and the two event channels.
struct Page {
    prod: Idx,
    cons: Idx,
    /// The writer's byte: the reader sets WRITE here to be woken on data.
    writer_flags: Flag,
    /// The reader's byte: the writer sets READ here to be woken on space.
    reader_flags: Flag,
    slots: [UnsafeCell<u32>; SLOTS],
    wake_reader: Notify,
    wake_writer: Notify,
}

const SLOTS: usize = 2;

/// Waits as `Vchan::block_until` does: check, ask for `bit` in `peers`,
/// re-check, sleep.
fn wait_until(ok: impl Fn() -> bool, peers: &Flag, bit: u8, wake: &Notify) {
    loop {
        if ok() {
            return;
        }
        notify::request::<Idx, _>(peers, bit);
        if ok() {
            return;
        }
        wake.wait();
    }
}

/// Writes `batches` batches of `per_batch` messages (values 1, 2, ...),
/// publishing once per batch, and reads them back in order.
fn model(batches: u32, per_batch: u32) {
    // Bounded preemptions, as in loom_ring.rs (LOOM_MAX_PREEMPTIONS
    // overrides); the bugs this protocol can have need one or two.
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(move || {
        let p = Arc::new(Page {
            prod: Idx(AtomicU32::new(0)),
            cons: Idx(AtomicU32::new(0)),
            writer_flags: Flag(AtomicU8::new(0)),
            reader_flags: Flag(AtomicU8::new(0)),
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
            wake_reader: Notify::new(),
            wake_writer: Notify::new(),
        });
        let total = batches * per_batch;
        let w = p.clone();
        let writer = thread::spawn(move || {
            let mut prod = 0u32;
            for _ in 0..batches {
                // Room for the whole batch (the vchan publishes before it
                // waits, so a batch never waits on itself).
                wait_until(
                    || {
                        let cons = notify::load_peer(&w.cons);
                        prod.wrapping_sub(cons) as usize + per_batch as usize <= SLOTS
                    },
                    &w.reader_flags,
                    READ,
                    &w.wake_writer,
                );
                for _ in 0..per_batch {
                    prod += 1;
                    w.slots[(prod as usize - 1) % SLOTS].with_mut(|s| {
                        // SAFETY: the slot is free space by the index check
                        // above; loom reports any overlapping access.
                        unsafe { *s = prod }
                    });
                }
                if notify::publish_and_check(&w.prod, prod, &w.writer_flags, WRITE) {
                    w.wake_reader.notify();
                }
            }
        });
        let mut cons = 0u32;
        while cons < total {
            wait_until(
                || notify::load_peer(&p.prod) != cons,
                &p.writer_flags,
                WRITE,
                &p.wake_reader,
            );
            let prod = notify::load_peer(&p.prod);
            while cons != prod {
                // SAFETY: below the producer index, so written and published;
                // loom reports a read that races the write.
                let v = p.slots[cons as usize % SLOTS].with(|s| unsafe { *s });
                cons += 1;
                assert_eq!(v, cons, "message out of order or torn");
            }
            if notify::publish_and_check(&p.cons, cons, &p.reader_flags, READ) {
                p.wake_writer.notify();
            }
        }
        writer.join().unwrap();
    });
}

#[test]
fn every_message_arrives_and_no_wake_up_is_lost() {
    model(2, 1);
}

#[test]
fn batched_publication_loses_no_wake_up() {
    model(2, 2);
}
