//! Criterion benches of the envelope codec: encode and decode of an envelope with a 256-byte
//! payload. Encoding is measured on a fresh envelope each time (the wire form is cached after the
//! first encode); decoding includes the typed payload decode.
//!
//! `cargo bench -p benches --bench codec`

use std::hint::black_box;
use std::time::Duration;

use benches::codec::{self, Blob};
use criterion::{BatchSize, Criterion, Throughput};

fn envelope_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_256B");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    let blob = Blob::sample();
    let wire = codec::encode(&codec::fresh_event(1, blob.clone()));
    group.bench_function("encode", |b| {
        b.iter_batched(
            || codec::fresh_event(1, blob.clone()),
            |event| codec::encode(black_box(&event)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode", |b| {
        b.iter(|| codec::decode(black_box(wire.clone())))
    });
    group.bench_function("encode+decode", |b| {
        b.iter_batched(
            || codec::fresh_event(1, blob.clone()),
            |event| codec::decode(codec::encode(black_box(&event))),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without an undocumented `pub fn`.
    let mut c = Criterion::default().configure_from_args();
    envelope_codec(&mut c);
    c.final_summary();
}
