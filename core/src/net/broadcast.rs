//! Client broadcast: what one client sends to a channel reaches that channel's other
//! subscribers on this server, on the network threads alone. No PostgreSQL call, no position,
//! no history: a broadcast is ephemeral, and says so (`docs/channels.md`).
//!
//! Every connection that may receive broadcasts has a bounded mailbox; a subscription to a
//! channel seats the connection in that channel's room for as long as it lives. Sending puts
//! the same `Shout` in each seated mailbox; a member whose mailbox is full misses it (counted in
//! `broadcasts_dropped_total`), and nobody else waits for it.

use crate::change::FrameSlot;
use crate::stats::{Stat, Stats};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Broadcasts a connection may have waiting before it misses more.
const MAILBOX: usize = 256;

/// Why a broadcast was not sent.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("subscribe to the channel before broadcasting on it")]
    NotSubscribed,
    #[error("this role may not broadcast on the channel")]
    Forbidden,
    #[error("at most {0} broadcasts a second per connection (realtime.broadcast_rate)")]
    RateLimited(u32),
    #[error("a broadcast's payload is at most {0} bytes (realtime.max_broadcast_size)")]
    TooLarge(usize),
    #[error("a broadcast's event is 1 to 255 bytes")]
    BadEvent,
}

/// One broadcast: its channel, event and payload (JSON text), encoded once per protocol.
pub struct Shout {
    pub channel: Arc<str>,
    pub event: Box<str>,
    pub payload: Box<str>,
    frames: [OnceLock<Utf8Bytes>; FrameSlot::COUNT],
}

impl Shout {
    pub fn new(channel: Arc<str>, event: Box<str>, payload: Box<str>) -> Shout {
        Shout {
            channel,
            event,
            payload,
            frames: Default::default(),
        }
    }

    /// The broadcast as encoded in `slot`, built by the first receiver that asks.
    pub fn encoded(&self, slot: FrameSlot, encode: impl FnOnce(&Shout) -> String) -> Utf8Bytes {
        self.frames[slot.0]
            .get_or_init(|| encode(self).into())
            .clone()
    }
}

/// Where a member's seat is: its mailbox, and how many of its subscriptions hold the seat.
struct Seat {
    mailbox: mpsc::Sender<Arc<Shout>>,
    held: usize,
}

/// Who is subscribed to each channel, for broadcasts.
pub struct Hub {
    rooms: Mutex<HashMap<Arc<str>, HashMap<u64, Seat>>>,
    next_member: AtomicU64,
    stats: &'static Stats,
}

impl Hub {
    pub fn new(stats: &'static Stats) -> Arc<Hub> {
        Arc::new(Hub {
            rooms: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            stats,
        })
    }

    /// A new member's mailbox: the handle its subscriptions join rooms and send with, and
    /// the end its connection reads.
    pub fn mailbox(self: &Arc<Hub>) -> (Mailbox, mpsc::Receiver<Arc<Shout>>) {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let member = self.next_member.fetch_add(1, Relaxed);
        let mailbox = Mailbox {
            hub: self.clone(),
            member,
            tx,
        };
        (mailbox, rx)
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, HashMap<u64, Seat>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place in the hub.
#[derive(Clone)]
pub struct Mailbox {
    hub: Arc<Hub>,
    member: u64,
    tx: mpsc::Sender<Arc<Shout>>,
}

impl Mailbox {
    /// Take a seat in `channel`'s room until the membership is dropped.
    pub fn join(&self, channel: &Arc<str>) -> Membership {
        let mut rooms = self.hub.rooms();
        let seat = rooms
            .entry(channel.clone())
            .or_default()
            .entry(self.member)
            .or_insert_with(|| Seat {
                mailbox: self.tx.clone(),
                held: 0,
            });
        seat.held += 1;
        Membership {
            hub: self.hub.clone(),
            channel: channel.clone(),
            member: self.member,
        }
    }

    /// Hand `shout` to every member seated in its channel (this one too if `include_self`);
    /// how many got it.
    pub fn send(&self, shout: Shout, include_self: bool) -> usize {
        let shout = Arc::new(shout);
        let rooms = self.hub.rooms();
        let Some(room) = rooms.get(&shout.channel) else {
            return 0;
        };
        let mut delivered = 0;
        for (member, seat) in room {
            if *member == self.member && !include_self {
                continue;
            }
            match seat.mailbox.try_send(shout.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.hub.stats.increment(Stat::BroadcastsDropped);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.hub.stats.add(Stat::BroadcastsSent, delivered as u64);
        delivered
    }
}

/// A seat held in a room; left when dropped.
pub struct Membership {
    hub: Arc<Hub>,
    channel: Arc<str>,
    member: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = self.hub.rooms();
        let Some(room) = rooms.get_mut(&self.channel) else {
            return;
        };
        if let Some(seat) = room.get_mut(&self.member) {
            seat.held -= 1;
            if seat.held == 0 {
                room.remove(&self.member);
            }
        }
        if room.is_empty() {
            rooms.remove(&self.channel);
        }
    }
}

/// A connection's allowance of broadcasts: `rate` a second, in bursts of up to a second's.
pub struct Allowance {
    tokens: f64,
    at: std::time::Instant,
}

impl Default for Allowance {
    fn default() -> Allowance {
        Allowance {
            tokens: f64::MAX,
            at: std::time::Instant::now(),
        }
    }
}

impl Allowance {
    /// Whether one more broadcast may go now.
    pub fn take(&mut self, rate: u32) -> bool {
        let now = std::time::Instant::now();
        let rate = f64::from(rate);
        let earned = now.duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens.min(rate) + earned).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn shout(channel: &str, n: u32) -> Shout {
        Shout::new(channel.into(), "e".into(), n.to_string().into())
    }

    #[test]
    fn a_broadcast_reaches_each_member_of_its_room_once_and_the_sender_only_if_asked() {
        static STATS: Stats = Stats::new();
        let hub = Hub::new(&STATS);
        let (a, mut a_rx) = hub.mailbox();
        let (b, mut b_rx) = hub.mailbox();
        let (c, mut c_rx) = hub.mailbox();
        let room: Arc<str> = "room".into();
        let _a = a.join(&room);
        // Two subscriptions of one connection: one seat.
        let (b1, b2) = (b.join(&room), b.join(&room));
        let _c = c.join(&"elsewhere".into());
        assert_eq!(a.send(shout("room", 1), false), 1);
        assert_eq!(b_rx.try_recv().unwrap().payload.as_ref(), "1");
        assert!(b_rx.try_recv().is_err() && a_rx.try_recv().is_err() && c_rx.try_recv().is_err());
        assert_eq!(a.send(shout("room", 2), true), 2);
        assert_eq!(a_rx.try_recv().unwrap().payload.as_ref(), "2");
        // The seat goes with the last subscription holding it; the room with its last seat.
        drop(b1);
        assert_eq!(a.send(shout("room", 3), false), 1);
        drop(b2);
        assert_eq!(a.send(shout("room", 4), false), 0);
        drop(_a);
        assert!(hub.rooms().get("room").is_none());
    }

    #[test]
    fn a_member_that_does_not_read_misses_broadcasts_and_nobody_else_does() {
        static STATS: Stats = Stats::new();
        let hub = Hub::new(&STATS);
        let (sender, _) = hub.mailbox();
        let (slow, _slow_rx) = hub.mailbox();
        let (fast, mut fast_rx) = hub.mailbox();
        let room: Arc<str> = "room".into();
        let _s = slow.join(&room);
        let _f = fast.join(&room);
        for n in 0..MAILBOX as u32 + 10 {
            sender.send(shout("room", n), false);
            assert_eq!(
                fast_rx.try_recv().unwrap().payload.to_string(),
                n.to_string()
            );
        }
        assert_eq!(STATS.get(Stat::BroadcastsDropped), 10);
    }

    #[test]
    fn an_allowance_admits_a_second_s_worth_then_its_rate() {
        let mut allowance = Allowance::default();
        let admitted = (0..100).filter(|_| allowance.take(10)).count();
        assert_eq!(admitted, 10);
        std::thread::sleep(std::time::Duration::from_millis(210));
        let admitted = (0..100).filter(|_| allowance.take(10)).count();
        assert!((2..=3).contains(&admitted), "{admitted}");
    }
}
