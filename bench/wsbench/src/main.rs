//! WebSocket benchmark tools (bench/websocket.py runs them):
//!
//! - `wsbench echo ADDR`: an echo upstream (tokio-tungstenite), printing
//!   its port on the first line;
//! - `wsbench load URL CONNECTIONS SECONDS SIZE`: CONNECTIONS clients, each
//!   sending a SIZE-byte text message and waiting for its echo, for
//!   SECONDS; prints `messages_per_sec p50_us p99_us errors`;
//! - `wsbench idle URL N HOLD_SECONDS`: opens N connections, sends one
//!   message on each, prints `open N` and holds them for HOLD_SECONDS;
//! - `wsbench soak URL CONNECTIONS SECONDS INTERVAL_MS`: CONNECTIONS clients
//!   each sending a message every INTERVAL_MS and checking its echo, for
//!   SECONDS; prints `messages errors`.
//!
//! `Origin: http://bench.local` goes with every handshake.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn open(url: &str) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("origin", "http://bench.local".parse().unwrap());
    let authority = request.uri().authority().unwrap().as_str().to_string();
    let stream = TcpStream::connect(&authority).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn echo(addr: String) {
    let listener = TcpListener::bind(&addr).await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn load(url: String, connections: usize, seconds: u64, size: usize) {
    let payload = "x".repeat(size);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url = url.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let Ok(mut ws) = open(&url).await else {
                return (latencies, 1);
            };
            while Instant::now() < end {
                let sent = Instant::now();
                if ws.send(Message::text(payload.clone())).await.is_err() {
                    errors += 1;
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => latencies.push(sent.elapsed().as_micros() as u64),
                    Some(Ok(_)) => {}
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().min(seconds as f64).max(0.001);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{:.0} {} {} {errors}",
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}

async fn idle(url: String, n: usize, hold: u64) {
    let mut open_ones = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for _ in 0..n {
        match open(&url).await {
            Ok(mut ws) => {
                if ws.send(Message::text("hi")).await.is_ok() && matches!(ws.next().await, Some(Ok(_))) {
                    open_ones.push(ws);
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    println!("open {} failed {failed}", open_ones.len());
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    tokio::time::sleep(Duration::from_secs(hold)).await;
}

async fn soak(url: String, connections: usize, seconds: u64, interval_ms: u64) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut ws) = open(&url).await else {
                return (0u64, 1u64);
            };
            let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
            let (mut sent, errors) = (0u64, 0u64);
            while Instant::now() < end {
                tick.tick().await;
                let text = format!("{{\"c\":{c},\"n\":{sent}}}");
                if ws.send(Message::text(text.clone())).await.is_err() {
                    return (sent, errors + 1);
                }
                // The gateway's pings come in between (answered by tungstenite).
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == text => break,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => return (sent, errors + 1),
                    }
                }
                sent += 1;
            }
            let _ = ws.close(None).await;
            (sent, errors)
        }));
    }
    let (mut messages, mut errors) = (0, 0);
    for task in tasks {
        let (m, e) = task.await.unwrap();
        messages += m;
        errors += e;
    }
    println!("{messages} {errors}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("echo") => echo(args[2].clone()).await,
        Some("load") => {
            load(
                args[2].clone(),
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
            )
            .await
        }
        Some("soak") => {
            soak(
                args[2].clone(),
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
            )
            .await
        }
        Some("idle") => {
            idle(
                args[2].clone(),
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
            )
            .await
        }
        _ => eprintln!(
            "usage: wsbench echo ADDR | load URL CONNECTIONS SECONDS SIZE | idle URL N HOLD_SECONDS"
        ),
    }
}
