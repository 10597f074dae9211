//! Load generators shared by the benchmarks: a closed loop (saturation) and an open loop
//! (a fixed request rate, latency of every request), both over one pooled hyper client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::http::{client, get};

/// Closed loop: requests per second over `seconds`.
pub async fn saturate(url: &str, workers: usize, seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let c = client();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (c, done, url) = (c.clone(), done.clone(), url.to_string());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    if let Some((200, _, _)) = get(&c, &url).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}

/// Open loop at `rate` per second: latencies in ms of the successful requests.
pub async fn at_rate(url: &str, rate: f64, seconds: u64) -> Vec<f64> {
    let c = client();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let n = (rate * seconds as f64) as usize;
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let (c, url) = (c.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            matches!(get(&c, &url).await, Some((200, _, _)))
                .then(|| t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut out = vec![];
    for t in tasks {
        if let Ok(Some(ms)) = t.await {
            out.push(ms);
        }
    }
    out
}
