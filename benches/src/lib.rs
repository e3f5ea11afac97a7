//! Benchmark support for interrole: the fixtures and the measuring code shared by the criterion
//! benches (`benches/benches/*.rs`) and the `compare` command (`src/bin/compare/`).
//!
//! - [`fanout`]: one publish to N cheap observers, for interrole and two peers
//!   (`tokio::sync::broadcast`, one crossbeam channel per subscriber), all on one thread; plus
//!   interrole's hub alone, to show where interrole's time goes.
//! - [`heavy`]: 16 observers each burning about 20 µs of CPU, dispatched sequentially, in
//!   parallel, and adaptively.
//! - [`codec`]: encoding and decoding an envelope with a 256-byte payload.
//! - [`relay`]: load on the relay server in a child process (multicast throughput and latency,
//!   idle subscribers at scale), for `compare multicast`, `sweep` and `scale`.
//! - [`nats`]: the same multicast load on a `nats-server` in a child process, with async-nats
//!   clients, for the NATS rows of `compare multicast` and `sweep`.
//! - [`bus`]: `compare bus`, a `Bus` per publisher and subscriber over the relay and over NATS,
//!   against raw async-nats.
//! - [`verify`]: every delivery of those runs checked by sender and sequence number (lost,
//!   duplicated, reordered counted apart).
//! - [`cpu`]: the CPU set the brokers are pinned to, and their worker count.
//! - [`recovery`]: how long until events flow again after the relay restarts or a NATS node
//!   dies, for `compare recovery`.
//! - [`measure`]: a small `Instant`-based harness (warm-up, repetitions, median) for `compare`.

use serde::{Deserialize, Serialize};

/// The event of the fan-out and heavy-observer benches: a small value (8 bytes), cheap to clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick(pub u64);
interrole::impl_event!(Tick = "bench.tick");

/// The fan-out sizes the issue asks for: observers per publish.
pub const FANOUT_SIZES: [usize; 4] = [1, 4, 16, 64];

/// The fan-out size at which the target ratio is checked.
pub const TARGET_N: usize = 16;

/// Target: the hub's cost per delivery at most this times tokio broadcast's at [`TARGET_N`] (also
/// printed for the whole `Bus::publish`).
pub const TARGET_RATIO_VS_TOKIO: f64 = 0.5;

/// Target: the parallel speed-up on heavy observers at least this times the cores available.
pub const TARGET_SPEEDUP_PER_CORE: f64 = 0.8;

/// Single-thread fan-out fixtures: one publish reaches N observers that each bump an atomic.
pub mod fanout {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use interrole::{
        Bus, Dispatch, DispatchConfig, Event, EventId, Hub, InstanceId, InterRoleEvent, Loopback,
        Observer, Subscription,
    };

    use crate::Tick;

    /// Something that delivers one value to N receivers per call, on the calling thread.
    pub trait Fanout {
        /// A short name for tables and benchmark ids.
        fn name(&self) -> &'static str;
        /// How many receivers each publish reaches.
        fn receivers(&self) -> usize;
        /// Publishes one value and has every receiver take it and bump the shared counter.
        fn publish_once(&mut self);
        /// How many deliveries were made so far (the shared counter).
        fn delivered(&self) -> u64;
        /// How many publishes were made so far: every one must have reached every receiver
        /// (`delivered == published × receivers`).
        fn published(&self) -> u64;
    }

    /// The systems measured, in table order: interrole and its two peers, then interrole's hub
    /// alone (a breakdown, not a peer), then the floor: a list of closures called in a loop.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum System {
        /// `interrole::Bus` on a private `Loopback`, sequential dispatch.
        Interrole,
        /// `tokio::sync::broadcast`: one send, then every receiver receives.
        TokioBroadcast,
        /// One `crossbeam_channel` per subscriber: a copy sent to each, then each receives.
        Crossbeam,
        /// Not a peer: interrole's hub alone ([`HubOnlyFanout`]), to show where the time goes.
        HubOnly,
        /// Not a peer: the floor, a `Vec<Box<dyn Fn(&Tick)>>` called in a loop ([`FloorFanout`]):
        /// what calling N closures costs with nothing around it.
        Floor,
    }

    impl System {
        /// Every system, in table order.
        pub const ALL: [System; 5] = [
            System::Interrole,
            System::TokioBroadcast,
            System::Crossbeam,
            System::HubOnly,
            System::Floor,
        ];

        /// The system's name in tables and benchmark ids.
        pub fn name(self) -> &'static str {
            match self {
                System::Interrole => "interrole",
                System::TokioBroadcast => "tokio_broadcast",
                System::Crossbeam => "crossbeam_channel",
                System::HubOnly => "interrole_hub_only",
                System::Floor => "closure_list_floor",
            }
        }

        /// A fixture of this system with `n` receivers.
        pub fn fixture(self, n: usize) -> Box<dyn Fanout> {
            match self {
                // The default a user gets: adaptive dispatch.
                System::Interrole => Box::new(InterroleFanout::new(n, Dispatch::Adaptive)),
                System::TokioBroadcast => Box::new(TokioBroadcastFanout::new(n)),
                System::Crossbeam => Box::new(CrossbeamFanout::new(n)),
                System::HubOnly => Box::new(HubOnlyFanout::new(n)),
                System::Floor => Box::new(FloorFanout::new(n)),
            }
        }
    }

    /// A bus with `n` subscribers of [`Tick`], each bumping one shared atomic.
    pub struct InterroleFanout {
        bus: Bus,
        guards: Vec<Subscription>,
        counter: Arc<AtomicU64>,
        next: u64,
    }

    impl std::fmt::Debug for InterroleFanout {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("InterroleFanout")
                .field("bus", &self.bus)
                .field("observers", &self.guards.len())
                .finish()
        }
    }

    impl InterroleFanout {
        /// A bus on its own `Loopback` fabric with `n` counting observers of [`Tick`].
        pub fn new(n: usize, mode: Dispatch) -> Self {
            Self::with_work(n, mode, || {})
        }

        /// The same, each observer also doing `work` before it counts.
        pub fn with_work(
            n: usize,
            mode: Dispatch,
            work: impl Fn() + Clone + Send + Sync + 'static,
        ) -> Self {
            let bus = bench_bus(mode);
            let counter = Arc::new(AtomicU64::new(0));
            let guards = (0..n)
                .map(|_| {
                    let (counter, work) = (counter.clone(), work.clone());
                    bus.subscribe::<Tick, _>(move |_: &Tick| {
                        work();
                        counter.fetch_add(1, Ordering::Relaxed);
                    })
                })
                .collect();
            Self {
                bus,
                guards,
                counter,
                next: 0,
            }
        }

        /// The bus, for its counters.
        pub fn bus(&self) -> &Bus {
            &self.bus
        }
    }

    impl Fanout for InterroleFanout {
        fn name(&self) -> &'static str {
            System::Interrole.name()
        }
        fn receivers(&self) -> usize {
            self.guards.len()
        }
        fn publish_once(&mut self) {
            self.next += 1;
            self.bus.publish(Tick(self.next)).expect("publish");
        }
        fn delivered(&self) -> u64 {
            self.counter.load(Ordering::Relaxed)
        }
        fn published(&self) -> u64 {
            self.next
        }
    }

    /// Interrole's hub alone, for a breakdown: a prebuilt envelope (cloning it is one reference
    /// count) published straight to a [`Hub`] with `n` raw observers of its tag that bump the
    /// shared atomic without looking at the payload. No bus, no transport, no envelope
    /// construction, no typed adapter: what is left is the dispatch itself.
    pub struct HubOnlyFanout {
        hub: Hub,
        event: InterRoleEvent,
        guards: Vec<Subscription>,
        counter: Arc<AtomicU64>,
        published: u64,
    }

    impl std::fmt::Debug for HubOnlyFanout {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HubOnlyFanout")
                .field("hub", &self.hub)
                .field("observers", &self.guards.len())
                .finish()
        }
    }

    /// A raw observer that bumps a shared counter.
    struct Count(Arc<AtomicU64>);

    impl Observer<InterRoleEvent> for Count {
        fn on_next(&self, _: &InterRoleEvent) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl HubOnlyFanout {
        /// A sequential hub with `n` counting observers of [`Tick`]'s tag.
        pub fn new(n: usize) -> Self {
            let hub = Hub::with_config(DispatchConfig {
                mode: Dispatch::Sequential,
                ..DispatchConfig::default()
            });
            let counter = Arc::new(AtomicU64::new(0));
            let guards = (0..n)
                .map(|_| hub.subscribe_tag(Tick::type_tag(), Arc::new(Count(counter.clone()))))
                .collect();
            let sender = InstanceId::new("bench").expect("valid instance id");
            let event = InterRoleEvent::new(EventId { sender, seq: 1 }, Tick(1));
            Self {
                hub,
                event,
                guards,
                counter,
                published: 0,
            }
        }
    }

    impl Fanout for HubOnlyFanout {
        fn name(&self) -> &'static str {
            System::HubOnly.name()
        }
        fn receivers(&self) -> usize {
            self.guards.len()
        }
        fn publish_once(&mut self) {
            self.published += 1;
            self.hub.publish(self.event.clone()).expect("publish");
        }
        fn delivered(&self) -> u64 {
            self.counter.load(Ordering::Relaxed)
        }
        fn published(&self) -> u64 {
            self.published
        }
    }

    /// A `tokio::sync::broadcast` channel with `n` receivers.
    #[derive(Debug)]
    pub struct TokioBroadcastFanout {
        tx: tokio::sync::broadcast::Sender<Tick>,
        rxs: Vec<tokio::sync::broadcast::Receiver<Tick>>,
        counter: Arc<AtomicU64>,
        next: u64,
    }

    impl TokioBroadcastFanout {
        /// A channel (capacity 64; each publish is drained at once) with `n` receivers.
        pub fn new(n: usize) -> Self {
            let (tx, _) = tokio::sync::broadcast::channel(64);
            let rxs = (0..n).map(|_| tx.subscribe()).collect();
            Self {
                tx,
                rxs,
                counter: Arc::new(AtomicU64::new(0)),
                next: 0,
            }
        }
    }

    impl Fanout for TokioBroadcastFanout {
        fn name(&self) -> &'static str {
            System::TokioBroadcast.name()
        }
        fn receivers(&self) -> usize {
            self.rxs.len()
        }
        fn publish_once(&mut self) {
            self.next += 1;
            self.tx.send(Tick(self.next)).expect("send");
            for rx in &mut self.rxs {
                let tick = rx.try_recv().expect("recv");
                std::hint::black_box(tick);
                self.counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn delivered(&self) -> u64 {
            self.counter.load(Ordering::Relaxed)
        }
        fn published(&self) -> u64 {
            self.next
        }
    }

    /// One bounded crossbeam channel per subscriber.
    #[derive(Debug)]
    pub struct CrossbeamFanout {
        channels: Vec<(
            crossbeam_channel::Sender<Tick>,
            crossbeam_channel::Receiver<Tick>,
        )>,
        counter: Arc<AtomicU64>,
        next: u64,
    }

    impl CrossbeamFanout {
        /// `n` bounded channels (capacity 64; each publish is drained at once).
        pub fn new(n: usize) -> Self {
            Self {
                channels: (0..n).map(|_| crossbeam_channel::bounded(64)).collect(),
                counter: Arc::new(AtomicU64::new(0)),
                next: 0,
            }
        }
    }

    impl Fanout for CrossbeamFanout {
        fn name(&self) -> &'static str {
            System::Crossbeam.name()
        }
        fn receivers(&self) -> usize {
            self.channels.len()
        }
        fn publish_once(&mut self) {
            self.next += 1;
            let tick = Tick(self.next);
            for (tx, _) in &self.channels {
                tx.try_send(tick).expect("send");
            }
            for (_, rx) in &self.channels {
                let tick = rx.try_recv().expect("recv");
                std::hint::black_box(tick);
                self.counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn delivered(&self) -> u64 {
            self.counter.load(Ordering::Relaxed)
        }
        fn published(&self) -> u64 {
            self.next
        }
    }

    /// One observer of the floor: a boxed closure, as a bus keeps its closure observers.
    type Closure = Box<dyn Fn(&Tick) + Send + Sync>;

    /// The floor: `n` boxed closures, each bumping the shared counter, called in a loop with a
    /// reference to the value. What a bus's typed closure observers would cost with no bus.
    pub struct FloorFanout {
        observers: Vec<Closure>,
        counter: Arc<AtomicU64>,
        next: u64,
    }

    impl std::fmt::Debug for FloorFanout {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FloorFanout")
                .field("observers", &self.observers.len())
                .finish()
        }
    }

    impl FloorFanout {
        /// `n` counting closures.
        pub fn new(n: usize) -> Self {
            let counter = Arc::new(AtomicU64::new(0));
            let observers = (0..n)
                .map(|_| {
                    let counter = counter.clone();
                    Box::new(move |t: &Tick| {
                        std::hint::black_box(t);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }) as Closure
                })
                .collect();
            Self {
                observers,
                counter,
                next: 0,
            }
        }
    }

    impl Fanout for FloorFanout {
        fn name(&self) -> &'static str {
            System::Floor.name()
        }
        fn receivers(&self) -> usize {
            self.observers.len()
        }
        fn publish_once(&mut self) {
            self.next += 1;
            let tick = std::hint::black_box(Tick(self.next));
            for o in &self.observers {
                o(&tick);
            }
        }
        fn delivered(&self) -> u64 {
            self.counter.load(Ordering::Relaxed)
        }
        fn published(&self) -> u64 {
            self.next
        }
    }

    /// A bus named `bench` on a fresh, private `Loopback`, with the given dispatch mode and the
    /// default parallel threshold.
    pub fn bench_bus(mode: Dispatch) -> Bus {
        Bus::builder()
            .instance("bench")
            .transport(Loopback::new())
            .dispatch(DispatchConfig {
                mode,
                ..DispatchConfig::default()
            })
            .build()
            .expect("build the bench bus")
    }
}

/// Heavy observers: each call burns a calibrated amount of CPU.
pub mod heavy {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use interrole::Dispatch;

    use crate::fanout::InterroleFanout;

    /// Observers per publish in the heavy bench.
    pub const OBSERVERS: usize = 16;

    /// The CPU work of one observer call.
    pub const WORK: Duration = Duration::from_micros(20);

    /// Burns CPU for `iterations` rounds of a dependent multiply-add chain (no sleep, no memory
    /// traffic). Returns a value the optimizer cannot predict.
    pub fn spin(iterations: u64) -> u64 {
        let mut x = black_box(0x9e37_79b9_7f4a_7c15_u64);
        for i in 0..iterations {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
        }
        black_box(x)
    }

    /// How many [`spin`] iterations take `target` on this machine (median of a few trials).
    pub fn calibrate(target: Duration) -> u64 {
        const PROBE: u64 = 200_000;
        spin(PROBE); // warm up
        let mut trials: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                spin(PROBE);
                t.elapsed().as_secs_f64() / PROBE as f64
            })
            .collect();
        trials.sort_by(f64::total_cmp);
        let per_iteration = trials[trials.len() / 2];
        ((target.as_secs_f64() / per_iteration) as u64).max(1)
    }

    /// A bus with [`OBSERVERS`] observers of [`Tick`](crate::Tick) that each [`spin`] `iterations`
    /// rounds.
    pub fn heavy_fanout(mode: Dispatch, iterations: u64) -> InterroleFanout {
        InterroleFanout::with_work(OBSERVERS, mode, move || {
            black_box(spin(iterations));
        })
    }
}

/// Envelope codec fixtures: a 256-byte payload.
pub mod codec {
    use interrole_core::{EventId, InstanceId, InterRoleEvent};
    use serde::{Deserialize, Serialize};

    /// Payload bytes of the codec bench.
    pub const PAYLOAD_BYTES: usize = 256;

    /// A 256-byte payload (`Vec<u8>`; bincode writes a length and the bytes).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Blob {
        /// The bytes.
        pub data: Vec<u8>,
    }
    interrole::impl_event!(Blob = "bench.blob");

    impl Blob {
        /// A payload of [`PAYLOAD_BYTES`] bytes.
        pub fn sample() -> Self {
            Self {
                data: (0..PAYLOAD_BYTES).map(|i| (i * 7) as u8).collect(),
            }
        }
    }

    /// A fresh local envelope (its wire form not cached yet) from sender `w-1`.
    pub fn fresh_event(seq: u64, blob: Blob) -> InterRoleEvent {
        let sender = InstanceId::new("w-1").expect("valid instance id");
        InterRoleEvent::new(EventId { sender, seq }, blob)
    }

    /// Encodes a fresh envelope: the header and the payload, the first `to_wire` of the event.
    pub fn encode(event: &InterRoleEvent) -> interrole_core::Bytes {
        event.to_wire().expect("encode envelope")
    }

    /// Decodes an envelope and its payload (the typed decode included); returns the payload
    /// length.
    pub fn decode(wire: interrole_core::Bytes) -> usize {
        let event = InterRoleEvent::from_wire(wire).expect("decode envelope");
        event.payload::<Blob>().expect("decode payload").data.len()
    }
}

pub mod bus;
pub mod cpu;
pub mod nats;
pub mod recovery;
pub mod relay;
pub mod verify;

/// A small harness for `compare`: warm-up, repetitions, median.
pub mod measure {
    use std::time::{Duration, Instant};

    /// The median of `values` (sorted in place). Panics on an empty slice.
    pub fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    }

    /// Nanoseconds per call of `f` over `calls` calls.
    pub fn ns_per_call(calls: u64, mut f: impl FnMut()) -> f64 {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        t.elapsed().as_nanos() as f64 / calls as f64
    }

    /// How many calls of `f` take about `budget` (at least 1), after running `f` for `warm_up`.
    pub fn calls_for(budget: Duration, warm_up: Duration, mut f: impl FnMut()) -> u64 {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < warm_up || calls == 0 {
            f();
            calls += 1;
        }
        let per_call = start.elapsed().as_secs_f64() / calls as f64;
        ((budget.as_secs_f64() / per_call) as u64).max(1)
    }
}
