//! The dispatch pool: the rayon threads that run a parallel dispatch.

use std::sync::OnceLock;

/// The pool, started on first use with [`pool_threads`] threads.
pub(crate) fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(pool_threads())
            .thread_name(|i| format!("interrole-dispatch-{i}"))
            .build()
            .expect("cannot start the interrole dispatch pool")
    })
}

/// The number of threads of the parallel dispatch pool: the cores available.
pub fn pool_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
