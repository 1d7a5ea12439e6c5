//! Tests of `transfer.rs`: the cap, the minimum rate (on a paused clock), pieces, growth.

use super::*;
use crate::budget::ByteBudget;
use crate::job::ErrorKind;

fn rate(bytes_per_sec: u64, window_ms: u64) -> MinRate {
    MinRate {
        bytes_per_sec,
        window: Duration::from_millis(window_ms),
    }
}

fn transfer(parts: &[&'static [u8]], rate: MinRate) -> Transfer {
    let chunks: Vec<Result<Bytes, Failure>> =
        parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
    Transfer::new(
        Box::pin(futures_util::stream::iter(chunks)),
        rate,
        "src".into(),
    )
}

/// One byte every `every`, `n` of them.
fn drip(n: u64, every: Duration, rate: MinRate) -> Transfer {
    let chunks = futures_util::stream::unfold(0, move |sent| async move {
        if sent == n {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok(Bytes::from_static(b"x")), sent + 1))
    });
    Transfer::new(Box::pin(chunks), rate, "drip".into())
}

async fn collect(parts: &[&'static [u8]], max: u64) -> Result<Bytes, Failure> {
    transfer(parts, MinRate::OFF).collect(0, 0, max, None).await
}

fn kind(r: Result<Bytes, Failure>) -> ErrorKind {
    match r {
        Err(Failure::Permanent { kind, .. }) => kind,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn bodies_are_capped_at_the_limit() {
    assert_eq!(collect(&[b"abc", b"de"], 5).await.unwrap(), &b"abcde"[..]);
    assert_eq!(
        kind(collect(&[b"abc", b"def"], 5).await),
        ErrorKind::TooLarge
    );
    assert_eq!(kind(collect(&[], 5).await), ErrorKind::EmptyFile);
    assert_eq!(kind(collect(&[b""], 5).await), ErrorKind::EmptyFile);
}

#[tokio::test]
async fn a_broken_body_is_the_sources_failure() {
    let chunks = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"ab")),
        Err(Failure::retryable("broken")),
    ]);
    let t = Transfer::new(Box::pin(chunks), MinRate::OFF, "src".into());
    let r = t.collect(0, 0, 5, None).await;
    assert_eq!(r, Err(Failure::retryable("broken")));
}

#[tokio::test(start_paused = true)]
async fn a_source_under_the_minimum_rate_is_cut_after_the_window() {
    // 5 bytes/s asked over 1 s windows; one byte every 300 ms is 3.3 bytes/s.
    let started = Instant::now();
    let r = drip(100, Duration::from_millis(300), rate(5, 1000))
        .collect(0, 0, 1000, None)
        .await;
    let Err(Failure::Retryable { message }) = r else {
        panic!("a slow source must be cut: {r:?}");
    };
    assert!(message.contains("too slow"), "{message}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1600),
        "cut after {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_source_that_sends_nothing_is_cut_too() {
    let silent = futures_util::stream::pending::<Result<Bytes, Failure>>();
    let t = Transfer::new(Box::pin(silent), rate(1, 500), "silent".into());
    let started = Instant::now();
    assert!(t.collect(0, 0, 10, None).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(800));
}

#[tokio::test(start_paused = true)]
async fn a_source_at_the_rate_and_a_short_one_are_not_cut() {
    // 10 bytes/s asked; one byte every 50 ms is 20 bytes/s, for 5 s.
    let body = drip(100, Duration::from_millis(50), rate(10, 1000))
        .collect(0, 0, 1000, None)
        .await
        .unwrap();
    assert_eq!(body.len(), 100);
    // Slower than the rate, but done within the grace period of one window.
    let short = drip(3, Duration::from_millis(200), rate(1000, 1000))
        .collect(0, 0, 1000, None)
        .await
        .unwrap();
    assert_eq!(short.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn time_outside_the_reads_is_not_the_sources() {
    // Pieces read in order with long pauses between them (the upload of the
    // previous one): only the time spent reading counts.
    let mut t = drip(20, Duration::from_millis(10), rate(50, 500));
    for _ in 0..4 {
        assert_eq!(t.take(5).await.unwrap().len(), 5);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let Err(Failure::Retryable { message }) = t.take(1).await else {
        panic!("the body ended");
    };
    assert!(message.contains("ended after 0 of 1"), "{message}");
}

#[tokio::test]
async fn pieces_are_taken_and_skipped_across_chunks() {
    let mut t = transfer(&[b"abcd", b"efgh", b"ij"], MinRate::OFF);
    assert_eq!(t.take(3).await.unwrap(), &b"abc"[..]);
    t.skip(2).await.unwrap();
    assert_eq!(t.take(4).await.unwrap(), &b"fghi"[..]);
    assert!(t.take(2).await.is_err(), "one byte left");
    let counted = transfer(&[b"abcd", b"ef"], MinRate::OFF).count(6).await;
    assert_eq!(counted, Ok(6));
    let over = transfer(&[b"abcd", b"ef"], MinRate::OFF).count(5).await;
    assert!(matches!(
        over,
        Err(Failure::Permanent {
            kind: ErrorKind::TooLarge,
            ..
        })
    ));
}

#[tokio::test]
async fn untrusted_bodies_grow_their_reservation_as_they_arrive() {
    let budget = ByteBudget::with_share(1 << 20, 1 << 20);
    let mut reservation = budget.streamed();
    let piece: &'static [u8] = &[7u8; 1000];
    let t = transfer(&[piece; 100], MinRate::OFF);
    // It claims 1 MiB; what it holds follows what it sent: 100 000 bytes.
    let body = t
        .collect(
            1 << 20,
            0,
            1 << 20,
            Some((&mut reservation, Duration::ZERO)),
        )
        .await
        .unwrap();
    assert_eq!(body.len(), 100_000);
    assert!(
        reservation.bytes() >= 100_000 && reservation.bytes() <= 2 * 100_000,
        "{}",
        reservation.bytes()
    );
    // A budget with no room left: the body fails instead of waiting for ever.
    let full = ByteBudget::with_share(64 * 1024, 64 * 1024);
    let _held = full.reserve(64 * 1024).await;
    let mut starved = full.streamed();
    let r = transfer(&[piece], MinRate::OFF)
        .collect(
            1 << 20,
            0,
            1 << 20,
            Some((&mut starved, Duration::from_millis(10))),
        )
        .await;
    let Err(Failure::Retryable { message }) = r else {
        panic!("no room must fail: {r:?}");
    };
    assert!(message.contains("MAX_INFLIGHT_BYTES"), "{message}");
}
