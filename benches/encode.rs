//! Encoding a 10 MiB file: throughput of building the request body (sniff, type
//! check, base64 written into the body), of the whole `encode` (SHA-256 included),
//! and the extra memory one job allocates, measured by a counting allocator.
//!
//!     cargo bench --bench encode
//!
//! Criterion runs on one thread, so the figures are per core.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cxone_worker::encode;

/// Counts live bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SIZE: usize = 10 * 1024 * 1024;

/// A PDF-looking file of `SIZE` bytes of pseudo-random content.
fn sample() -> Vec<u8> {
    let mut data = Vec::with_capacity(SIZE);
    data.extend_from_slice(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while data.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(SIZE);
    data
}

fn allowed() -> Vec<String> {
    cxone_worker::config::DEFAULT_MIME_TYPES
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Extra bytes allocated at the peak of one `encode`, over what was live before.
fn extra_memory(data: &[u8], allowed: &[String]) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let encoded = encode::encode(
        data,
        Some("application/pdf"),
        allowed,
        None,
        &encode::BodyFormat::default(),
    )
    .unwrap();
    let peak = PEAK.load(Ordering::Relaxed);
    drop(black_box(encoded));
    peak - before
}

fn bench(c: &mut Criterion) {
    let data = sample();
    let allowed = allowed();

    let extra = extra_memory(&data, &allowed);
    println!(
        "extra memory per 10 MiB job: {extra} bytes = {:.3}x the file (limit 1.4x)",
        extra as f64 / SIZE as f64
    );

    let mut group = c.benchmark_group("encode_10MiB");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(30);
    group.bench_function("body", |b| {
        b.iter(|| {
            let t = encode::resolve_type(&data, Some("application/pdf"), &allowed).unwrap();
            black_box(encode::build_body(black_box(&data), &t, None))
        })
    });
    group.bench_function("body_and_sha256", |b| {
        b.iter(|| {
            black_box(
                encode::encode(
                    black_box(&data),
                    Some("application/pdf"),
                    &allowed,
                    None,
                    &encode::BodyFormat::default(),
                )
                .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
