//! A WebSocket broadcaster with nothing behind it: no database, no capture, no rendering.
//!
//! It speaks just enough of realtime_ext's protocol for the load generator (every `subscribe`
//! is acknowledged) and, when a client sends `{"type":"start","events":E,"rate":R}`, sends every
//! connected client E change messages at R per second, each stamped when it is made. It uses the
//! same transport as realtime_ext's server (tokio, tungstenite, a broadcast channel, one write
//! per client per event, all waiting messages written before one flush), so its latency is what
//! this machine allows for the socket work alone: the floor under scenario L. Told of a row by
//! `{"type":"emit","id":I,"sent_at_us":T}` (the load generator's committed floor, sent once the
//! row's INSERT has committed), it sends every client that row's change at once.

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages kept for a slow client: enough that none misses one in these runs (realtime_ext
/// reads a slow client's backlog from its history; a floor that dropped would be cheaper).
const BACKLOG: usize = 1 << 16;

pub async fn serve(port: u16) -> ! {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the floor server's port");
    let (tx, _) = broadcast::channel::<Utf8Bytes>(BACKLOG);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(session(stream, tx.clone()));
    }
}

async fn session(stream: TcpStream, tx: broadcast::Sender<Utf8Bytes>) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"subscribe""#) => {
                    let ack = Message::text(r#"{"type":"subscribed","id":"b","position":0}"#);
                    if sink.send(ack).await.is_err() { return }
                }
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"start""#) => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    let events = v["events"].as_u64().unwrap_or(0);
                    let rate = v["rate"].as_f64().unwrap_or(1000.0);
                    tokio::spawn(generate(tx.clone(), events, rate));
                }
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"emit""#) => {
                    let id: u64 = crate::client::number_after(&text, r#""id":"#).unwrap_or(0);
                    let sent: i64 = crate::client::number_after(&text, r#""sent_at_us":"#).unwrap_or(0);
                    let _ = tx.send(change(id, sent).into());
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            message = rx.recv() => {
                let Ok(first) = message else { continue };
                let mut result = sink.feed(Message::Text(first)).await;
                while result.is_ok() {
                    match rx.try_recv() {
                        Ok(next) => result = sink.feed(Message::Text(next)).await,
                        Err(_) => break,
                    }
                }
                if result.is_err() || sink.flush().await.is_err() { return }
            }
        }
    }
}

async fn generate(tx: broadcast::Sender<Utf8Bytes>, events: u64, rate: f64) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for id in 0..events {
        ticks.tick().await;
        let _ = tx.send(change(id, crate::client::now_us()).into());
    }
}

fn change(id: u64, sent_at_us: i64) -> String {
    format!(
        r#"{{"type":"change","table":"bench_latency","op":"INSERT","new":{{"id":{id},"sent_at_us":{sent_at_us}}}}}"#
    )
}
