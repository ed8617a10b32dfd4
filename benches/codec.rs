//! Micro-benchmarks of the hot paths that do not touch a socket:
//! envelope encode/decode, broadcast framing, SSE encoding.
//! Run: `cargo bench --bench codec` (figures in BENCHMARKS.md).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use street::sse::{encode_event, SseEvent};
use street::ws::envelope;

#[derive(Serialize, Deserialize)]
struct Chat {
    room: String,
    user: String,
    text: String,
    n: u64,
}

fn chat() -> Chat {
    Chat {
        room: "general".into(),
        user: "alice".into(),
        text: "hello there, how is everyone doing today?".into(),
        n: 42,
    }
}

fn bench_envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let msg = chat();
    g.bench_function("encode chat", |b| {
        b.iter(|| envelope::encode_at("chat", black_box(&msg), 1_700_000_000_000))
    });
    let big: Vec<u64> = (0..1000).collect();
    g.throughput(Throughput::Bytes(
        envelope::encode("x", &big)
            .map(|b| b.len() as u64)
            .unwrap_or(0),
    ));
    g.bench_function("encode 1000 numbers", |b| {
        b.iter(|| envelope::encode_at("x", black_box(&big), 1))
    });
    g.throughput(Throughput::Elements(1));
    let text = String::from_utf8(
        envelope::encode_at("chat", &msg, 1)
            .map(|b| b.to_vec())
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    g.bench_function("decode envelope", |b| {
        b.iter(|| envelope::decode(black_box(&text)).map(|i| i.event.len()))
    });
    g.bench_function("decode + typed payload", |b| {
        b.iter(|| {
            let inc = envelope::decode(black_box(&text)).ok()?;
            serde_json::from_str::<Chat>(inc.payload?.get())
                .ok()
                .map(|c| c.n)
        })
    });
    g.finish();
}

fn bench_broadcast_framing(c: &mut Criterion) {
    // What a broadcast costs before any system call: one envelope encode, then per
    // recipient a frame header and a reference-counted clone of the shared bytes.
    let mut g = c.benchmark_group("broadcast framing");
    for n in [1_000usize, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n} recipients"), |b| {
            let msg = chat();
            let mut queue: Vec<([u8; 10], usize, Bytes)> = Vec::with_capacity(n);
            b.iter(|| {
                queue.clear();
                let Ok(bytes) = envelope::encode("chat", &msg) else {
                    return 0;
                };
                for _ in 0..n {
                    let (h, hl) = street::ws::__frame_header(1, bytes.len());
                    queue.push((h, hl, bytes.clone()));
                }
                queue.len()
            })
        });
    }
    g.finish();
}

fn bench_sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse");
    let small = SseEvent {
        id: Some("123".into()),
        event: Some("tick".into()),
        data: r#"{"time":"2026-11-26T19:00:00Z"}"#.into(),
        retry: None,
    };
    g.bench_function("encode tick", |b| {
        b.iter(|| encode_event(black_box(&small)))
    });
    let multi = SseEvent {
        data: "line one\nline two\r\nline three\rline four".repeat(25),
        ..Default::default()
    };
    g.throughput(Throughput::Bytes(multi.data.len() as u64));
    g.bench_function("encode 100-line data", |b| {
        b.iter(|| encode_event(black_box(&multi)))
    });
    g.finish();
}

criterion_group!(benches, bench_envelope, bench_broadcast_framing, bench_sse);
criterion_main!(benches);
