//! Criterion benches of fan-out: one publish to N cheap observers (interrole, tokio broadcast,
//! one crossbeam channel per subscriber; throughput counts deliveries), and 16 heavy observers
//! dispatched sequentially, in parallel and adaptively.
//!
//! `cargo bench -p benches --bench fanout`

use std::time::Duration;

use benches::FANOUT_SIZES;
use benches::fanout::Fanout;
use benches::fanout::System;
use benches::heavy::{self, heavy_fanout};
use criterion::{BenchmarkId, Criterion, Throughput};
use interrole::Dispatch;

fn cheap_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in FANOUT_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        for system in System::ALL {
            let mut fixture = system.fixture(n);
            group.bench_function(BenchmarkId::new(system.name(), n), |b| {
                b.iter(|| fixture.publish_once())
            });
        }
    }
    group.finish();
}

fn heavy_observers(c: &mut Criterion) {
    let iterations = heavy::calibrate(heavy::WORK);
    let mut group = c.benchmark_group("heavy_16x20us");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(heavy::OBSERVERS as u64));
    for (name, mode) in [
        ("sequential", Dispatch::Sequential),
        ("parallel", Dispatch::Parallel),
        ("adaptive", Dispatch::Adaptive),
    ] {
        let mut fixture = heavy_fanout(mode, iterations);
        group.bench_function(name, |b| b.iter(|| fixture.publish_once()));
    }
    group.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without an undocumented `pub fn`.
    let mut c = Criterion::default().configure_from_args();
    cheap_fanout(&mut c);
    heavy_observers(&mut c);
    c.final_summary();
}
