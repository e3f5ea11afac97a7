//! The synchronization primitives the registry core is written against, so that the same source
//! can be model-checked with loom (`tests/loom_registry.rs` provides loom-backed equivalents).

pub(crate) use std::sync::Arc;
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Waits a little before a waiter looks at a lock again: spins, then yields, then sleeps in
/// steps that double from 1 µs up to 1 ms.
pub(crate) fn backoff(round: u32) {
    if round < 32 {
        std::hint::spin_loop();
    } else if round < 64 {
        std::thread::yield_now();
    } else {
        let micros = 1u64 << (round - 64).min(10);
        std::thread::sleep(std::time::Duration::from_micros(micros));
    }
}

/// A mutex whose `lock` cannot fail (parking_lot: no poisoning).
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(parking_lot::Mutex::new(value))
    }
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.0.lock()
    }
}

/// A reader-writer lock whose `read` and `write` cannot fail.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T>(parking_lot::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(parking_lot::RwLock::new(value))
    }
    pub(crate) fn read(&self) -> parking_lot::RwLockReadGuard<'_, T> {
        self.0.read()
    }
    pub(crate) fn write(&self) -> parking_lot::RwLockWriteGuard<'_, T> {
        self.0.write()
    }
}
