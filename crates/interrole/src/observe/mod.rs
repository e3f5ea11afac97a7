//! What observers are and how they stay subscribed.
//!
//! - `observer`: the [`Observer`](observer::Observer) / [`Observable`](observer::Observable)
//!   contract, [`ObserverError`](observer::ObserverError), the closure and typed adapters;
//! - `subscription`: the [`Subscription`](subscription::Subscription) guard, which cancels
//!   through two small traits (`Registered`, `Unregister`) and so does not know the hub;
//! - `mailbox`: async observers, each fed through a bounded mailbox drained by a task.
//!
//! `observer` and `subscription` are leaves that the dispatch core builds on; `mailbox` is built
//! on the dispatch core (it queues its waits there and drops events through its guards).

pub(crate) mod mailbox;
pub(crate) mod observer;
pub(crate) mod subscription;
