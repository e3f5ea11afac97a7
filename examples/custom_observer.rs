//! A full [`Observer`]: `on_next` for each event, `on_error` when something went wrong for this
//! observer (here, its own `on_next` panicked), `on_completed` once when the bus closes. The
//! panicking call is isolated: the observer stays subscribed and every other observer gets
//! every event.
//!
//! ```text
//! cargo run --example custom_observer
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use interrole::{Bus, Observer, ObserverError};
use serde::{Deserialize, Serialize};

/// Reload one configuration section.
#[derive(Debug, Serialize, Deserialize)]
struct RoleConfigurationSectionRefresh {
    section_name: String,
}
interrole::impl_event!(
    RoleConfigurationSectionRefresh = "interrole.role.configuration-section-refresh"
);

/// Reloads configuration sections; panics on one it cannot parse.
#[derive(Debug, Default)]
struct ConfigReloader {
    loaded: Mutex<Vec<String>>,
    errors: Mutex<Vec<ObserverError>>,
    completed: AtomicUsize,
}

impl Observer<RoleConfigurationSectionRefresh> for ConfigReloader {
    fn on_next(&self, e: &RoleConfigurationSectionRefresh) {
        if e.section_name == "Broken" {
            panic!(
                "intended panic: section {:?} does not parse",
                e.section_name
            );
        }
        println!("[reloader] reloaded {:?}", e.section_name);
        self.loaded.lock().unwrap().push(e.section_name.clone());
    }

    // Told here instead of unwinding into the publisher; the observer stays subscribed.
    fn on_error(&self, error: ObserverError) {
        println!("[reloader] on_error: {error}");
        self.errors.lock().unwrap().push(error);
    }

    fn on_completed(&self) {
        println!("[reloader] on_completed: no more events");
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The hub logs each caught panic with tracing; show it.
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    // A bus's own observers get what it publishes: one bus is enough here.
    let bus = Bus::builder().instance("worker-1").build()?;

    // `observe` takes the observer by value; `observe_arc` lets us keep a handle to read it.
    let reloader = Arc::new(ConfigReloader::default());
    let _reloader_guard = bus.observe_arc::<RoleConfigurationSectionRefresh>(reloader.clone());

    // A second observer of the same type, to show it is not affected by the first one's panic.
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let _bystander = bus.subscribe::<RoleConfigurationSectionRefresh, _>(move |e| {
        count.fetch_add(1, Ordering::Relaxed);
        println!("[bystander] saw {:?}", e.section_name);
    });

    for section in ["Diagnostics", "Broken", "Storage"] {
        if section == "Broken" {
            println!("-- next: the reloader panics ON PURPOSE; Rust prints the panic below --");
        }
        // Never fails because of an observer: the panic stays inside the hub.
        bus.publish(RoleConfigurationSectionRefresh {
            section_name: section.into(),
        })?;
    }

    bus.close().await;
    bus.close().await; // closing twice does nothing more

    assert_eq!(*reloader.loaded.lock().unwrap(), ["Diagnostics", "Storage"]);
    assert!(matches!(
        reloader.errors.lock().unwrap().as_slice(),
        [ObserverError::Panicked { .. }]
    ));
    assert_eq!(reloader.completed.load(Ordering::Relaxed), 1);
    assert_eq!(seen.load(Ordering::Relaxed), 3);
    assert_eq!(bus.stats().hub.panics, 1);
    println!("done: the reloader handled 2 of 3 sections, reported 1 panic, completed once;");
    println!("      the bystander saw all 3");
    Ok(())
}
