use super::*;

fn poll_once(timer: &mut IdleTimer) -> Poll<()> {
    let waker = futures_util::task::noop_waker();
    timer.poll_expired(&mut Context::from_waker(&waker))
}

async fn expired(timer: &mut IdleTimer) {
    std::future::poll_fn(|cx| timer.poll_expired(cx)).await;
}

#[tokio::test(start_paused = true)]
async fn idle_timer_fires_after_idle_without_chunks() {
    let start = Instant::now();
    let mut timer = IdleTimer::new(Duration::from_millis(500));
    expired(&mut timer).await;
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn idle_timer_counts_from_the_last_chunk_not_the_first() {
    let idle = Duration::from_millis(500);
    let mut timer = IdleTimer::new(idle);
    // Chunks every 400 ms for 20 s: always below idle, far above it in total.
    for _ in 0..50 {
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(poll_once(&mut timer).is_pending());
        timer.touch();
    }
    let last = Instant::now();
    tokio::time::advance(Duration::from_millis(499)).await;
    assert!(poll_once(&mut timer).is_pending());
    expired(&mut timer).await;
    assert_eq!(last.elapsed(), idle);
}

#[tokio::test(start_paused = true)]
async fn idle_timer_stays_expired_once_fired() {
    let mut timer = IdleTimer::new(Duration::from_millis(10));
    expired(&mut timer).await;
    assert!(poll_once(&mut timer).is_ready());
}

/// A relay without a usage tap over `inner`, cut after `idle` of silence.
fn relay_of(
    inner: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    sse: bool,
) -> Relay {
    Relay {
        inner: Box::pin(inner),
        sse,
        state: State::Streaming,
        idle: IdleTimer::new(Duration::from_millis(500)),
        tap: None,
        stripper: None,
    }
}

/// One chunk at once, then `gaps` more chunks each `gap` apart, then silence.
fn chunks_then_silence(
    gaps: u32,
    gap: Duration,
) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(0u32, move |n| async move {
        if n > 0 {
            tokio::time::sleep(gap).await;
        }
        (n <= gaps).then(|| (Ok(Bytes::from_static(b"data: {}\n\n")), n + 1))
    })
    .chain(futures_util::stream::pending())
}

#[tokio::test(start_paused = true)]
async fn relay_ends_a_silent_sse_stream_with_an_upstream_timeout_event() {
    let mut relay = relay_of(chunks_then_silence(0, Duration::ZERO), true);
    assert!(relay.next().await.unwrap().is_ok());
    let silent_from = Instant::now();
    let event = relay.next().await.unwrap().unwrap();
    assert_eq!(silent_from.elapsed(), Duration::from_millis(500));
    let text = String::from_utf8(event.to_vec()).unwrap();
    assert!(text.contains("\"code\":\"upstream_timeout\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(relay.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn relay_cuts_a_silent_plain_body_with_an_error() {
    let mut relay = relay_of(chunks_then_silence(0, Duration::ZERO), false);
    assert!(relay.next().await.unwrap().is_ok());
    let err = relay.next().await.unwrap().unwrap_err();
    assert_eq!(
        err.as_response_error().status_code(),
        StatusCode::GATEWAY_TIMEOUT
    );
    assert!(relay.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn relay_keeps_a_stream_whose_gaps_stay_below_idle() {
    // 40 gaps of 400 ms: 16 s in all, 32 times `idle`, never cut.
    let mut relay = relay_of(chunks_then_silence(40, Duration::from_millis(400)), true);
    for _ in 0..41 {
        let chunk = relay.next().await.unwrap().unwrap();
        assert_eq!(&chunk[..], b"data: {}\n\n");
    }
    let event = relay.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&event).contains("upstream_timeout"));
}

#[tokio::test(start_paused = true)]
async fn idle_timer_accepts_an_enormous_idle() {
    let mut timer = IdleTimer::new(Duration::MAX);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(poll_once(&mut timer).is_pending());
}
