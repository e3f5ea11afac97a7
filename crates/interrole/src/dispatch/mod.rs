//! The dispatch core: the [`Hub`](hub::Hub) and what it stands on.
//!
//! - `registry`: observer slots, the lanes that hold them, the table that finds a lane;
//!   written against [`crate::loom`] and model-checked (`loom_tests`);
//! - `gate`: a lane's lock;
//! - `hub`: the public hub, sequential or parallel dispatch, `publish_group`;
//! - `reentry`: what is published from inside an observer call, queued on its thread, with the
//!   RAII guard that restores the thread's state when user code unwinds;
//! - `unwind`: observer calls and event drops whose panic has nowhere else to go;
//! - `pool`: the rayon threads of a parallel dispatch.
//!
//! Depends on `observe::{observer, subscription}` (the contract it calls and the guard it
//! returns); nothing here knows the bus, the reliability layer or a transport.

pub(crate) mod gate;
pub(crate) mod registry;

#[cfg(all(test, interrole_loom))]
mod loom_tests;

#[cfg(not(all(test, interrole_loom)))]
pub(crate) mod hub;
#[cfg(not(all(test, interrole_loom)))]
pub(crate) mod pool;
#[cfg(not(all(test, interrole_loom)))]
pub(crate) mod reentry;
#[cfg(not(all(test, interrole_loom)))]
pub(crate) mod unwind;
