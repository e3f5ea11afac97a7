//! Subscribing with closures: typed closures, a closure that sees every event as its raw
//! envelope, unsubscribing by dropping the guard, and keeping a subscription with `detach`.
//!
//! ```text
//! cargo run --example closures
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use interrole::{Bus, InterRoleEvent, Loopback};
use serde::{Deserialize, Serialize};

/// Reload one configuration section.
#[derive(Debug, Serialize, Deserialize)]
struct RoleConfigurationSectionRefresh {
    section_name: String,
}
interrole::impl_event!(
    RoleConfigurationSectionRefresh = "interrole.role.configuration-section-refresh"
);

/// Recycle every instance of a role.
#[derive(Debug, Serialize, Deserialize)]
struct RoleGracefulRecycle {
    role_name: String,
}
interrole::impl_event!(RoleGracefulRecycle = "interrole.role.graceful-recycle");

fn refresh(section: &str) -> RoleConfigurationSectionRefresh {
    RoleConfigurationSectionRefresh {
        section_name: section.into(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two instances on one in-process fabric: what one publishes reaches the other.
    let fabric = Loopback::new();
    let controller = Bus::builder()
        .instance("controller")
        .transport(fabric.clone())
        .build()?;
    let worker = Bus::builder()
        .instance("worker-1")
        .transport(fabric)
        .build()?;

    // 1. A typed closure: called with `&E` for events of type `E` only.
    let refreshes = Arc::new(AtomicUsize::new(0));
    let count = refreshes.clone();
    let refresh_guard = worker.subscribe::<RoleConfigurationSectionRefresh, _>(move |e| {
        count.fetch_add(1, Ordering::Relaxed);
        println!("[typed]    refresh section {:?}", e.section_name);
    });

    // 2. A closure of every event: it gets the envelope, whatever the type.
    let everything = worker.subscribe_all(|ev: &InterRoleEvent| {
        let age = ev.timestamp().elapsed().unwrap_or_default();
        println!(
            "[envelope] {} #{} from {} ({age:?} ago)",
            ev.type_tag(),
            ev.seq(),
            ev.sender()
        );
        // A typed look at the payload: `None` when the event carries another type.
        if let Some(recycle) = ev.payload::<RoleGracefulRecycle>() {
            println!("[envelope]   ...a recycle of role {:?}", recycle.role_name);
        }
    });

    // 3. A detached subscription: no guard to keep, it lives as long as the bus.
    let recycles = Arc::new(AtomicUsize::new(0));
    let count = recycles.clone();
    worker
        .subscribe::<RoleGracefulRecycle, _>(move |e| {
            count.fetch_add(1, Ordering::Relaxed);
            println!("[detached] recycle role {:?}", e.role_name);
        })
        .detach();

    // On a loopback fabric, publish returns once every observer of every bus has been called.
    controller.publish(refresh("Diagnostics"))?;
    controller.publish(RoleGracefulRecycle {
        role_name: "worker".into(),
    })?;
    assert_eq!(refreshes.load(Ordering::Relaxed), 1);

    // Dropping a guard unsubscribes: once `drop` returns, that closure gets nothing more.
    drop(refresh_guard);
    drop(everything);
    println!("-- typed and envelope guards dropped; publishing again --");
    controller.publish(refresh("Storage"))?;
    controller.publish(RoleGracefulRecycle {
        role_name: "worker".into(),
    })?;
    assert_eq!(
        refreshes.load(Ordering::Relaxed),
        1,
        "dropped: no more calls"
    );
    assert_eq!(
        recycles.load(Ordering::Relaxed),
        2,
        "detached: still called"
    );

    // Closing ends every subscription, the detached one included.
    worker.close().await;
    controller.close().await;
    println!(
        "done: {} refresh, {} recycles; the worker's bus delivered {} calls",
        refreshes.load(Ordering::Relaxed),
        recycles.load(Ordering::Relaxed),
        worker.stats().hub.delivered
    );
    Ok(())
}
