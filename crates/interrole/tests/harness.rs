//! The test harness (feature `testing`), as a user's own test would use it: copy this file to
//! test the roles of a service. `cargo add interrole --dev --features testing`.

use std::time::Duration;

use interrole::testing::TestHarness;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    id: u64,
}
interrole::impl_event!(OrderPlaced = "shop.order-placed");

#[derive(Debug, Serialize, Deserialize)]
struct InvoiceRequested {
    order: u64,
}
interrole::impl_event!(InvoiceRequested = "shop.invoice-requested");

#[derive(Debug, Serialize, Deserialize)]
struct Audit {
    order: u64,
}
interrole::impl_event!(Audit = "shop.audit");

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(100);

/// The code under test: billing requests an invoice for every order over 0, and sends the
/// auditor a note.
fn billing_rules(billing: &interrole::Bus) -> interrole::Subscription {
    let bus = billing.clone();
    billing.subscribe::<OrderPlaced, _>(move |order| {
        if order.id > 0 {
            bus.publish(InvoiceRequested { order: order.id }).unwrap();
            bus.send_to(
                &interrole::InstanceId::new("auditor").unwrap(),
                Audit { order: order.id },
            )
            .unwrap();
        }
    })
}

#[tokio::test]
async fn an_order_leads_to_an_invoice_request_and_an_audit_note() {
    let harness = TestHarness::new();
    let shop = harness.bus("shop").unwrap();
    let billing = harness.bus("billing").unwrap();
    let auditor = harness.bus("auditor").unwrap();
    let _rules = billing_rules(&billing);
    let _notes = auditor.subscribe::<Audit, _>(|_| {});

    shop.publish(OrderPlaced { id: 7 }).unwrap();

    let placed = harness.published::<OrderPlaced>().next(WAIT).await.unwrap();
    assert_eq!(placed.envelope().sender().as_str(), "shop");
    let consumed = harness
        .consumed::<OrderPlaced>()
        .on("billing")
        .next(WAIT)
        .await;
    assert_eq!(consumed.unwrap().id, 7);
    let invoice = harness
        .published::<InvoiceRequested>()
        .next(WAIT)
        .await
        .unwrap();
    assert_eq!(invoice.order, 7);
    let note = harness.sent::<Audit>().next(WAIT).await.unwrap();
    assert_eq!(
        (note.order, note.envelope().sender().as_str()),
        (7, "billing")
    );
    assert_eq!(
        harness
            .consumed::<Audit>()
            .on("auditor")
            .next(WAIT)
            .await
            .unwrap()
            .order,
        7
    );
    // Nobody observes invoice requests: published, consumed by nobody.
    assert!(
        harness
            .consumed::<InvoiceRequested>()
            .nothing_within(QUIET)
            .await
    );
}

#[tokio::test]
async fn an_order_of_zero_leads_to_nothing() {
    let harness = TestHarness::new();
    let shop = harness.bus("shop").unwrap();
    let billing = harness.bus("billing").unwrap();
    let _rules = billing_rules(&billing);

    shop.publish(OrderPlaced { id: 0 }).unwrap();

    assert!(
        harness
            .consumed::<OrderPlaced>()
            .on("billing")
            .next(WAIT)
            .await
            .is_some()
    );
    assert!(
        harness
            .published::<InvoiceRequested>()
            .nothing_within(QUIET)
            .await
    );
    assert!(harness.sent::<Audit>().nothing_within(QUIET).await);
}

#[tokio::test]
async fn a_cursor_returns_each_event_once_and_waits_for_the_next() {
    let harness = TestHarness::new();
    let shop = harness.bus("shop").unwrap();
    shop.publish(OrderPlaced { id: 1 }).unwrap();
    let mut placed = harness.published::<OrderPlaced>();
    assert_eq!(placed.next(WAIT).await.unwrap().id, 1);
    assert!(placed.nothing_within(QUIET).await);
    let later = shop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        later.publish(OrderPlaced { id: 2 }).unwrap();
    });
    assert_eq!(placed.next(WAIT).await.unwrap().id, 2);
    // Another cursor starts from the first.
    let ids: Vec<u64> = harness
        .published::<OrderPlaced>()
        .so_far()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, [1, 2]);
}
