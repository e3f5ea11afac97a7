//! A lane's gate: the lock held while a lane's observers are called.

#[cfg(all(test, interrole_loom))]
pub(crate) use mocked::{Gate, GateGuard};
#[cfg(not(all(test, interrole_loom)))]
pub(crate) use real::{Gate, GateGuard};

#[cfg(not(all(test, interrole_loom)))]
mod real {
    /// A lane's gate: a lock around the data it protects, taken with one compare-and-swap and let go
    /// with a plain store (a `parking_lot` mutex lets go with a second compare-and-swap, which on a
    /// dispatch to cheap observers is a measurable share of the cost). A waiter, which only exists
    /// when two publishers reach one lane at once or an unsubscribe waits for a call, spins briefly,
    /// then yields, then sleeps in steps that double up to 1 ms: the call it waits for may be long.
    #[derive(Debug, Default)]
    pub(crate) struct Gate<T>(spin::mutex::SpinMutex<T>);

    /// Holds a [`Gate`]; lets go when dropped.
    pub(crate) type GateGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T>;

    impl<T> Gate<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(spin::mutex::SpinMutex::new(value))
        }

        #[inline]
        pub(crate) fn lock(&self) -> GateGuard<'_, T> {
            match self.0.try_lock() {
                Some(guard) => guard,
                None => self.lock_contended(),
            }
        }

        #[cold]
        fn lock_contended(&self) -> GateGuard<'_, T> {
            let mut round = 0u32;
            loop {
                if !self.0.is_locked() {
                    if let Some(guard) = self.0.try_lock() {
                        return guard;
                    }
                }
                backoff(round);
                round = round.saturating_add(1);
            }
        }

        #[inline]
        pub(crate) fn try_lock(&self) -> Option<GateGuard<'_, T>> {
            self.0.try_lock()
        }
    }

    /// Waits a little before a waiter looks at a gate again: spins, then yields, then sleeps in
    /// steps that double from 1 µs up to 1 ms.
    fn backoff(round: u32) {
        if round < 32 {
            std::hint::spin_loop();
        } else if round < 64 {
            std::thread::yield_now();
        } else {
            let micros = 1u64 << (round - 64).min(10);
            std::thread::sleep(std::time::Duration::from_micros(micros));
        }
    }
}

/// The gate on loom's mutex, for the model checks: they check what the gate is for (mutual
/// exclusion and its ordering), not how the real one waits.
#[cfg(all(test, interrole_loom))]
mod mocked {
    pub(crate) type GateGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    #[derive(Debug)]
    pub(crate) struct Gate<T>(loom::sync::Mutex<T>);

    impl<T> Gate<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> GateGuard<'_, T> {
            self.0.lock().unwrap()
        }
        pub(crate) fn try_lock(&self) -> Option<GateGuard<'_, T>> {
            self.0.try_lock().ok()
        }
    }
}
