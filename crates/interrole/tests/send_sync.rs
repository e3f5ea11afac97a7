//! Compile-time checks: the public handles are `Send + Sync`, the traits object safe.

use interrole::*;

fn is_send_sync<T: Send + Sync>() {}
fn is_send<T: Send>() {}

#[derive(serde::Serialize, serde::Deserialize)]
struct E;
interrole::impl_event!(E = "check.e");

#[test]
fn public_types_are_send_and_sync() {
    is_send_sync::<Bus>();
    is_send_sync::<BusBuilder>();
    is_send_sync::<Hub>();
    is_send_sync::<Loopback>();
    is_send_sync::<Subscription>();
    is_send_sync::<InterRoleEvent>();
    is_send_sync::<Received<E>>();
    is_send_sync::<PublishError>();
    is_send_sync::<BuildError>();
    is_send_sync::<ObserverError>();
    is_send_sync::<TransportError>();
    is_send_sync::<BusStats>();
    is_send_sync::<Mailbox>();
    is_send::<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>();
}

#[test]
fn close_is_a_send_future() {
    fn check<F: std::future::Future + Send>(_: F) {}
    let bus = Bus::builder().transport(Loopback::new()).build().unwrap();
    check(bus.close());
}

#[test]
fn traits_are_object_safe() {
    fn _observer(_: &dyn Observer<InterRoleEvent>) {}
    fn _typed(_: &dyn Observer<E>) {}
    fn _observable(_: &dyn Observable<InterRoleEvent>) {}
    fn _async(_: &dyn AsyncObserver<InterRoleEvent>) {}
    fn _transport(_: &dyn Transport) {}
    fn _connection(_: &dyn interrole::core::Connection) {}
    fn _inbound(_: &dyn interrole::core::Inbound) {}
}
