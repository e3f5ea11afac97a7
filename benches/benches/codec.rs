//! Criterion benches of the envelope codec: encode and decode of an envelope with a 256-byte
//! payload. Encoding is measured on a fresh envelope each time (the wire form is cached after the
//! first encode); decoding includes the typed payload decode.
//!
//! The payload codecs (bincode, JSON, MessagePack with named fields, and CBOR through ciborium
//! for the choice of the self-describing binary codec) on one event shaped as applications'
//! events are: names, numbers, an option, a list, a nested struct, an enum. Each encodes into a
//! reused buffer and decodes into the type.
//!
//! `cargo bench -p benches --bench codec`

use std::hint::black_box;
use std::time::Duration;

use benches::codec::{self, Blob};
use criterion::{BatchSize, Criterion, Throughput};
use interrole_core::Codec;
use interrole_core::codec::{decode_with, encode_with};
use serde::{Deserialize, Serialize};

/// An event as applications write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JobReport {
    job: u64,
    worker: String,
    note: Option<String>,
    samples: Vec<u32>,
    healthy: bool,
    phase: Phase,
    limits: Limits,
    ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Phase {
    Idle,
    Running { since_ms: u64 },
    Failed { code: u16, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Limits {
    cpu_millis: u32,
    memory_bytes: u64,
}

fn job_report() -> JobReport {
    JobReport {
        job: 1 << 40,
        worker: "worker-17.eu-west".into(),
        note: Some("rebalanced after a node left".into()),
        samples: (0..16).map(|i| i * 37).collect(),
        healthy: true,
        phase: Phase::Failed {
            code: 503,
            reason: "upstream busy".into(),
        },
        limits: Limits {
            cpu_millis: 1500,
            memory_bytes: 512 << 20,
        },
        ratio: 0.625,
    }
}

fn payload_codecs(c: &mut Criterion) {
    let value = job_report();
    let _ = (Phase::Idle, Phase::Running { since_ms: 0 });
    let mut group = c.benchmark_group("payload_codec");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    for codec in [Codec::Bincode, Codec::Json, Codec::MessagePack] {
        let mut bytes = Vec::new();
        encode_with(codec, &value, &mut bytes).unwrap();
        assert_eq!(decode_with::<JobReport>(codec, &bytes).unwrap(), value);
        println!("payload_codec/{codec}: {} bytes", bytes.len());
        let mut out = Vec::with_capacity(512);
        group.bench_function(format!("{codec}/encode"), |b| {
            b.iter(|| {
                out.clear();
                encode_with(codec, black_box(&value), &mut out).unwrap();
            })
        });
        group.bench_function(format!("{codec}/decode"), |b| {
            b.iter(|| decode_with::<JobReport>(codec, black_box(&bytes)).unwrap())
        });
    }
    // CBOR, measured for the choice (not a codec of the bus).
    let mut cbor = Vec::new();
    ciborium::into_writer(&value, &mut cbor).unwrap();
    assert_eq!(
        ciborium::from_reader::<JobReport, _>(cbor.as_slice()).unwrap(),
        value
    );
    println!("payload_codec/cbor: {} bytes", cbor.len());
    let mut out = Vec::with_capacity(512);
    group.bench_function("cbor/encode", |b| {
        b.iter(|| {
            out.clear();
            ciborium::into_writer(black_box(&value), &mut out).unwrap();
        })
    });
    group.bench_function("cbor/decode", |b| {
        b.iter(|| ciborium::from_reader::<JobReport, _>(black_box(cbor.as_slice())).unwrap())
    });
    group.finish();
}

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
    payload_codecs(&mut c);
    c.final_summary();
}
