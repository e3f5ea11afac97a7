//! Building a bus: [`BusBuilder`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use interrole_core::{InstanceId, OpenSpec, Topic, Transport};
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::bus::{Bus, BusInner, BusSink, Closing, Sequence, Uplink};
use crate::dispatch::hub::{DispatchConfig, Hub};
use crate::error::BuildError;
use crate::inbound::Receiver;
use crate::loopback::Loopback;
use crate::meters::Meters;
use crate::reliable::Reliability;
use crate::reliable::host::Reliable;

/// Builds a [`Bus`]: `Bus::builder().instance("worker-1").build()`.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until .build()"]
pub struct BusBuilder {
    instance: Option<String>,
    topic: Option<String>,
    transport: Option<Arc<dyn Transport>>,
    dispatch: DispatchConfig,
    runtime: Option<Handle>,
    close_timeout: Option<Duration>,
    reliability: Reliability,
    #[cfg(feature = "relay")]
    relay_error: Option<crate::relay::ConfigError>,
}

impl BusBuilder {
    /// The instance this bus speaks for: the sender of what it publishes. Default: a name made of
    /// the process id and a counter.
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// The topic shared by every instance that should hear each other. Default `"interrole"`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The transport. Default: [`Loopback::shared`], the process-wide in-process fabric.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// The transport, already shared.
    pub fn transport_arc(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Carries the bus over the interrole relay at `url` (`ws://host:port`, `wss://host`), on
    /// the path named by the [topic](BusBuilder::topic), proving its rights with `credentials`.
    /// A bad URL is reported by [`build`](BusBuilder::build).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use interrole::Bus;
    /// use interrole::relay::Credentials;
    ///
    /// let bus = Bus::builder()
    ///     .instance("worker-1")
    ///     .topic("orders")
    ///     .relay("ws://127.0.0.1:9400", Credentials::key("root", "s3cret"))
    ///     .build()?;
    /// bus.host().unwrap().wait_opened(std::time::Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "relay")]
    pub fn relay(mut self, url: &str, credentials: crate::relay::Credentials) -> Self {
        match crate::relay::Relay::connect_to(url, credentials) {
            Ok(relay) => self.transport = Some(Arc::new(crate::relay::RelayTransport::new(relay))),
            Err(e) => self.relay_error = Some(e),
        }
        self
    }

    /// Carries the bus over NATS (see [`interrole::nats`](crate::nats) for the subjects and
    /// what each mode promises); the topic names the subjects.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use interrole::Bus;
    /// use interrole::nats::NatsOptions;
    ///
    /// let bus = Bus::builder()
    ///     .instance("worker-1")
    ///     .topic("orders")
    ///     .nats(NatsOptions::new("nats://127.0.0.1:4222"))
    ///     .build()?;
    /// bus.host().unwrap().wait_opened(std::time::Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "nats")]
    pub fn nats(mut self, options: crate::nats::NatsOptions) -> Self {
        self.transport = Some(Arc::new(crate::nats::NatsTransport::new(options)));
        self
    }

    /// How the bus rides out a network transport's failures: retry policy, outbox, retention,
    /// gap timeout (see [`Reliability`]). Ignored on an in-process transport.
    pub fn reliability(mut self, reliability: Reliability) -> Self {
        self.reliability = reliability;
        self
    }

    /// The retry policy of the connection (a shortcut for [`Reliability::retry`]).
    pub fn retry(mut self, policy: interrole_core::RetryPolicy) -> Self {
        self.reliability.retry = policy;
        self
    }

    /// How the hub calls observers (see [`DispatchConfig`]).
    pub fn dispatch(mut self, config: DispatchConfig) -> Self {
        self.dispatch = config;
        self
    }

    /// The tokio runtime that runs async observers and transport tasks. Default: the runtime
    /// current when they are started.
    pub fn runtime(mut self, handle: Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// How long [`Bus::close`] waits for async observers to drain their mailboxes. Default 10 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = Some(timeout);
        self
    }

    /// Builds the bus and connects it. Does not block: an in-process transport connects at once,
    /// others in a task on the runtime.
    ///
    /// # Errors
    /// [`BuildError`] for an invalid instance id or topic, a transport that refuses at once, or a
    /// transport that needs a runtime when there is none.
    pub fn build(self) -> Result<Bus, BuildError> {
        #[cfg(feature = "relay")]
        if let Some(e) = self.relay_error {
            return Err(BuildError::Relay(e));
        }
        let instance = match self.instance {
            Some(id) => InstanceId::new(id)?,
            None => {
                static N: AtomicU64 = AtomicU64::new(1);
                let n = N.fetch_add(1, Ordering::Relaxed);
                InstanceId::new(format!("instance-{}-{n}", std::process::id()))?
            }
        };
        let topic = match self.topic {
            Some(t) => Topic::new(t)?,
            None => Topic::default(),
        };
        let transport = self
            .transport
            .unwrap_or_else(|| Arc::new(Loopback::shared()));
        let lossless = transport.limits().lossless;
        // The metrics handles, from the recorder in place now.
        let hub = Hub::with_meters(self.dispatch, Meters::new(&topic, &instance));
        #[cfg(feature = "opentelemetry")]
        let _ = hub.inner.trace_labels.set(crate::trace::Labels {
            topic: topic.clone(),
            instance: instance.clone(),
        });
        let receiver = Arc::new(Receiver::new(hub.clone()));
        // On a network transport, sequence numbers continue above a previous life of the same
        // instance: they start from the microsecond the bus was built.
        let epoch = if lossless { 1 } else { now_micros().max(1) };
        let handle = if lossless {
            None
        } else {
            let handle = self
                .runtime
                .clone()
                .or_else(|| Handle::try_current().ok())
                .ok_or(BuildError::NoRuntime(transport.name()))?;
            Some(handle)
        };
        // The reliability layer holds the bus as its sink (a weak handle: the bus owns the layer).
        let inner = Arc::new_cyclic(|bus| {
            let uplink = if lossless {
                Uplink::Direct(OnceLock::new())
            } else {
                let sink = Arc::new(BusSink {
                    bus: bus.clone(),
                    receiver: receiver.clone(),
                });
                Uplink::Reliable(Reliable::new(
                    transport.clone(),
                    topic.clone(),
                    instance.clone(),
                    self.reliability,
                    sink,
                    epoch,
                    hub.inner.meters.reliable(),
                ))
            };
            BusInner {
                instance: instance.clone(),
                topic: topic.clone(),
                hub,
                receiver: receiver.clone(),
                seq: Mutex::new(Sequence {
                    last: if lossless { 0 } else { epoch - 1 },
                    epoch,
                    published: 0,
                    multicast: 0,
                    directed: HashMap::new(),
                }),
                uplink,
                transport: transport.clone(),
                closed: AtomicBool::new(false),
                runtime: self.runtime.clone(),
                tasks: Mutex::new(Vec::new()),
                task_runtime: Mutex::new(None),
                close_timeout: self.close_timeout.unwrap_or(Duration::from_secs(10)),
                closing: Closing::default(),
            }
        });
        if let (Uplink::Reliable(reliable), Some(handle)) = (&inner.uplink, handle) {
            handle.spawn(reliable.clone().supervise());
        }
        if let Uplink::Direct(slot) = &inner.uplink {
            let spec = OpenSpec::new(topic, instance);
            let opening = transport.open(spec.clone(), receiver.clone());
            match opening.now_or_never() {
                Some(result) => {
                    let _ = slot.set(result?);
                }
                None => {
                    let handle = self
                        .runtime
                        .or_else(|| Handle::try_current().ok())
                        .ok_or(BuildError::NoRuntime(transport.name()))?;
                    let weak = Arc::downgrade(&inner);
                    handle.spawn(async move {
                        match transport.open(spec, receiver).await {
                            Ok(conn) => match weak.upgrade() {
                                Some(inner) if !inner.closed.load(Ordering::Acquire) => {
                                    if let Uplink::Direct(slot) = &inner.uplink {
                                        let _ = slot.set(conn);
                                    }
                                }
                                _ => conn.close().await,
                            },
                            Err(error) => tracing::error!(%error, "opening the transport failed"),
                        }
                    });
                }
            }
        }
        tracing::debug!(instance = %inner.instance, topic = %inner.topic, transport = inner.transport.name(), "bus built");
        Ok(Bus { inner })
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}


impl Bus {
    /// A builder.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }
}
