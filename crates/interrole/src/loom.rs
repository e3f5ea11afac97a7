//! The synchronization primitives the dispatch core is written against, as tokio's
//! `crate::loom`: std's and parking_lot's in every build, loom's in this crate's own tests when
//! built with `--cfg interrole_loom` (`.ci/loom`), where the model checks of
//! `dispatch/registry.rs` explore every interleaving of their threads. Code outside the
//! dispatch core uses std directly.

#[cfg(all(test, interrole_loom))]
pub(crate) use mocked::*;
#[cfg(not(all(test, interrole_loom)))]
pub(crate) use std_impl::*;

#[cfg(not(all(test, interrole_loom)))]
mod std_impl {
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::OnceLock;
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A mutex whose `lock` cannot fail (parking_lot: no poisoning).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(parking_lot::Mutex::new(value))
        }
        #[inline]
        pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
            self.0.lock()
        }
    }
}

#[cfg(all(test, interrole_loom))]
mod mocked {
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    /// Loom has no `OnceLock`; std's is used (the registry adds lanes under its state mutex,
    /// which the model does see).
    pub(crate) use std::sync::OnceLock;

    /// A mutex whose `lock` cannot fail.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }
}
