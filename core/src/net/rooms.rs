//! Rooms: what clients say to each other on a channel, on the network threads alone. A
//! client broadcast reaches the channel's other subscribers on this server; presence tells
//! each subscriber who is tracked on the channel, in full when it joins and then as joins and
//! leaves. No PostgreSQL call, no position, no history: both are ephemeral and say so
//! (`docs/channels.md`).
//!
//! A subscription to a channel seats its connection in the channel's room for as long as it
//! lives. Broadcasts go to each seated connection's bounded mailbox; a member whose mailbox is
//! full misses them (counted in `broadcasts_dropped_total`), and nobody else waits. Presence
//! is never dropped: each room logs its changes once, and each seat keeps only how far its
//! connection has read. Seats are told up to the room's last cut, made at most every
//! `PERIOD`, and the diff between two cuts (merged per member) is built once and handed to
//! every seat that crosses it: in a burst of joins the seats share each diff and its encoding,
//! where diffs cut for each seat would cost the square of the room. A seat behind is handed
//! each diff it missed, in order (never more than the bounded log holds); one left behind the
//! log is told the whole state instead.

use crate::bridge::ChannelRights;
use crate::change::FrameSlot;
use crate::stats::{Stat, Stats};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
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
    #[error("this role may not track presence on the channel")]
    TrackForbidden,
    #[error("a presence state is at most {0} bytes (realtime.max_broadcast_size)")]
    StateTooLarge(usize),
    #[error("the channel tracks at most {0} members (realtime.max_presence_per_channel)")]
    PresenceFull(usize),
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

/// What a member is tracked with: its state (JSON text), and the key a protocol that groups
/// members by key shows it under (a Supabase client's `config.presence.key`; `None`: its
/// member number).
#[derive(Debug, PartialEq, Eq)]
pub struct Tracked {
    pub key: Option<Box<str>>,
    pub state: Arc<str>,
}

/// A member tracked in a room: its member number and what it is tracked with.
pub type Present = (u64, Arc<Tracked>);

/// What a connection is told about presence in one room.
pub enum Presence {
    /// Everyone tracked now.
    State {
        channel: Arc<str>,
        members: Vec<Present>,
    },
    /// Who joined (or changed state) and who left since the last it was told; a member that
    /// changed state is in both, with its old state among the leaves.
    Diff {
        channel: Arc<str>,
        joins: Vec<Present>,
        leaves: Vec<Present>,
    },
}

/// Presence as told: built once for all the seats owed the same, encoded once per protocol.
pub struct Told {
    pub presence: Presence,
    frames: [OnceLock<Utf8Bytes>; FrameSlot::COUNT],
}

impl Told {
    fn new(presence: Presence) -> Arc<Told> {
        Arc::new(Told {
            presence,
            frames: Default::default(),
        })
    }

    /// As encoded in `slot`, built by the first connection that asks.
    pub fn encoded(&self, slot: FrameSlot, encode: impl FnOnce(&Presence) -> String) -> Utf8Bytes {
        self.frames[slot.0]
            .get_or_init(|| encode(&self.presence).into())
            .clone()
    }
}

/// A member's state before a change (`None`: absent) and after it.
type States = (Option<Arc<Tracked>>, Option<Arc<Tracked>>);

/// One change of presence: the member, and its states.
type Change = (u64, Option<Arc<Tracked>>, Option<Arc<Tracked>>);

/// Changes kept at least, for seats that are behind; past `max(LOG_MIN, 2 × members)` the
/// oldest go, and a seat behind them is told the whole state instead.
const LOG_MIN: usize = 1024;

/// How often a room's log is cut: presence reaches its members at most this late, in a
/// burst as one diff a period rather than one for each change.
pub const PERIOD: Duration = Duration::from_millis(50);

struct Seat {
    mailbox: mpsc::Sender<Arc<Shout>>,
    /// Wakes the connection to take what it is owed (`take_presence`).
    wake: Arc<Notify>,
    /// Subscriptions of the connection holding the seat.
    held: usize,
    rights: ChannelRights,
    /// How far into the room's log its connection has been told; `None`: owed the whole state.
    told: Option<u64>,
    /// Told everything: to be woken at the next change.
    waiting: bool,
}

#[derive(Default)]
struct Room {
    seats: HashMap<u64, Seat>,
    present: BTreeMap<u64, Arc<Tracked>>,
    /// Presence changes in order; the first is number `base`.
    log: VecDeque<Change>,
    base: u64,
    /// Seats told everything, woken at the next change.
    waiting: Vec<u64>,
    /// The last state built, for the seats owed the same: (at, told).
    last_state: Option<(u64, Arc<Told>)>,
    /// Where seats are told up to, and when the last was made; only ever made at `end`.
    cuts: BTreeSet<u64>,
    cut_at: Option<Instant>,
    /// The diff from each cut to the next, once built (`None`: the changes cancelled out).
    diffs: HashMap<u64, Option<Arc<Told>>>,
}

impl Room {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// `member` went from `was` to `now`: logged, and the seats that are up to date woken.
    fn changed(&mut self, member: u64, was: Option<Arc<Tracked>>, now: Option<Arc<Tracked>>) {
        self.log.push_back((member, was, now));
        let keep = LOG_MIN.max(2 * self.present.len());
        while self.log.len() > keep {
            self.log.pop_front();
            self.base += 1;
        }
        if self.cuts.first().is_some_and(|cut| *cut < self.base) {
            self.cuts = self.cuts.split_off(&self.base);
            let base = self.base;
            self.diffs.retain(|from, _| *from >= base);
        }
        for waiting in self.waiting.drain(..) {
            if let Some(seat) = self.seats.get_mut(&waiting) {
                seat.waiting = false;
                seat.wake.notify_one();
            }
        }
    }

    fn leave(&mut self, member: u64) {
        if let Some(was) = self.present.remove(&member) {
            self.changed(member, Some(was), None);
        }
    }

    /// What `member`'s seat is owed at `now`, in order. `Some(at)`: more is owed from `at`,
    /// when the next cut may be made; `None`: it is up to date, and woken at the next change.
    fn tell(
        &mut self,
        channel: &Arc<str>,
        member: u64,
        now: Instant,
        told: &mut Vec<Arc<Told>>,
    ) -> Option<Instant> {
        let end = self.end();
        let seat = self.seats.get(&member)?;
        if !seat.rights.presence {
            return None;
        }
        let due = self.cut_at.map_or(now, |at| at + PERIOD);
        if self.cuts.last().is_none_or(|cut| *cut < end) && now >= due {
            self.cuts.insert(end);
            self.cut_at = Some(now);
        }
        let cut = self.cuts.last().copied().unwrap_or(end);
        let to = match seat.told {
            Some(from) if from >= self.base => {
                self.walk(channel, from, cut, told);
                from.max(cut)
            }
            _ => {
                told.push(self.state(channel, end));
                end
            }
        };
        let seat = self.seats.get_mut(&member)?;
        seat.told = Some(to);
        if to < end {
            return Some(self.cut_at.map_or(now, |at| at + PERIOD));
        }
        if !seat.waiting {
            seat.waiting = true;
            self.waiting.push(member);
        }
        None
    }

    /// The changes from `from` to `end` (a cut): the diff between each two cuts on the way,
    /// built by the first seat to cross it.
    fn walk(&mut self, channel: &Arc<str>, mut from: u64, end: u64, told: &mut Vec<Arc<Told>>) {
        while from < end {
            let to = self
                .cuts
                .range(from + 1..end)
                .next()
                .copied()
                .unwrap_or(end);
            let diff = match self.diffs.get(&from) {
                Some(diff) => diff.clone(),
                None => {
                    let diff = self.diff(channel, from, to);
                    self.diffs.insert(from, diff.clone());
                    diff
                }
            };
            told.extend(diff);
            from = to;
        }
    }

    fn state(&mut self, channel: &Arc<str>, end: u64) -> Arc<Told> {
        match &self.last_state {
            Some((at, told)) if *at == end => told.clone(),
            _ => {
                let members = self.present.iter().map(|(m, s)| (*m, s.clone())).collect();
                let channel = channel.clone();
                let told = Told::new(Presence::State { channel, members });
                self.last_state = Some((end, told.clone()));
                told
            }
        }
    }

    /// The changes from `from` to `to`, merged per member: `None` if they cancel out.
    fn diff(&self, channel: &Arc<str>, from: u64, to: u64) -> Option<Arc<Told>> {
        let mut merged: BTreeMap<u64, States> = BTreeMap::new();
        for (member, was, now) in self
            .log
            .range((from - self.base) as usize..(to - self.base) as usize)
        {
            let entry = merged.entry(*member).or_insert((was.clone(), None));
            entry.1 = now.clone();
        }
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        for (member, (was, now)) in merged {
            if was != now {
                leaves.extend(was.map(|s| (member, s)));
                joins.extend(now.map(|s| (member, s)));
            }
        }
        (!joins.is_empty() || !leaves.is_empty()).then(|| {
            let channel = channel.clone();
            Told::new(Presence::Diff {
                channel,
                joins,
                leaves,
            })
        })
    }
}

/// Who is subscribed to each channel, for broadcasts and presence.
pub struct Hub {
    rooms: Mutex<HashMap<Arc<str>, Room>>,
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

    /// A new member's mailbox: the handle its subscriptions join rooms and speak with, and
    /// the end its connection reads broadcasts from.
    pub fn mailbox(self: &Arc<Hub>) -> (Mailbox, mpsc::Receiver<Arc<Shout>>) {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let member = self.next_member.fetch_add(1, Relaxed);
        let mailbox = Mailbox {
            hub: self.clone(),
            member,
            tx,
            wake: Arc::new(Notify::new()),
        };
        (mailbox, rx)
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<Arc<str>, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place in the hub.
#[derive(Clone)]
pub struct Mailbox {
    hub: Arc<Hub>,
    member: u64,
    tx: mpsc::Sender<Arc<Shout>>,
    wake: Arc<Notify>,
}

impl Mailbox {
    /// This connection's key in presence.
    pub fn member(&self) -> u64 {
        self.member
    }

    /// Notified when there is presence to take (`take_presence`).
    pub fn presence_waiting(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Take a seat in `channel`'s room, with `rights`, until the membership is dropped. A
    /// seat new to presence is told the whole state first; one whose rights no longer allow
    /// tracking stops being tracked.
    pub fn join(&self, channel: &Arc<str>, rights: ChannelRights) -> Membership {
        let mut rooms = self.hub.rooms();
        let room = rooms.entry(channel.clone()).or_default();
        let seat = room.seats.entry(self.member).or_insert_with(|| Seat {
            mailbox: self.tx.clone(),
            wake: self.wake.clone(),
            held: 0,
            rights: ChannelRights::default(),
            told: None,
            waiting: false,
        });
        seat.held += 1;
        if rights.presence && !seat.rights.presence {
            seat.told = None;
            seat.wake.notify_one();
        }
        seat.rights = rights;
        if !rights.track {
            room.leave(self.member);
        }
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
        for (member, seat) in &room.seats {
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

    /// Track this connection in `channel` with `state` (JSON text) under `key`, replacing what
    /// it had; at most `max` members a room.
    pub fn track(
        &self,
        channel: &str,
        key: Option<Box<str>>,
        state: Arc<str>,
        max: usize,
    ) -> Result<(), Refused> {
        let state = Arc::new(Tracked { key, state });
        let mut rooms = self.hub.rooms();
        let room = rooms.get_mut(channel).ok_or(Refused::NotSubscribed)?;
        match room.seats.get(&self.member) {
            None => return Err(Refused::NotSubscribed),
            Some(seat) if !seat.rights.track => return Err(Refused::TrackForbidden),
            Some(_) => {}
        }
        if !room.present.contains_key(&self.member) && room.present.len() >= max {
            return Err(Refused::PresenceFull(max));
        }
        let was = room.present.insert(self.member, state.clone());
        room.changed(self.member, was, Some(state));
        Ok(())
    }

    /// Stop tracking this connection in `channel`.
    pub fn untrack(&self, channel: &str) {
        if let Some(room) = self.hub.rooms().get_mut(channel) {
            room.leave(self.member);
        }
    }

    /// What this connection has not been told about presence in `channels`, and when to come
    /// back for more if more is owed (otherwise it is woken when there is).
    pub fn take_presence<'a>(
        &self,
        channels: impl Iterator<Item = &'a Arc<str>>,
    ) -> (Vec<Arc<Told>>, Option<Instant>) {
        self.take_presence_at(channels, Instant::now())
    }

    fn take_presence_at<'a>(
        &self,
        channels: impl Iterator<Item = &'a Arc<str>>,
        now: Instant,
    ) -> (Vec<Arc<Told>>, Option<Instant>) {
        let mut rooms = self.hub.rooms();
        let mut told = Vec::new();
        let mut again: Option<Instant> = None;
        for channel in channels {
            if let Some(room) = rooms.get_mut(channel) {
                let more = room.tell(channel, self.member, now, &mut told);
                again = match (again, more) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        (told, again)
    }
}

/// A seat held in a room; left when dropped (and with the last one, the member's presence).
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
        if let Some(seat) = room.seats.get_mut(&self.member) {
            seat.held -= 1;
            if seat.held == 0 {
                room.seats.remove(&self.member);
                room.leave(self.member);
            }
        }
        if room.seats.is_empty() {
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
        self.take_at(rate, std::time::Instant::now())
    }

    fn take_at(&mut self, rate: u32, now: std::time::Instant) -> bool {
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

    const ALL: ChannelRights = ChannelRights {
        send: true,
        presence: true,
        track: true,
    };

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
        let _a = a.join(&room, ALL);
        // Two subscriptions of one connection: one seat.
        let (b1, b2) = (b.join(&room, ALL), b.join(&room, ALL));
        let _c = c.join(&"elsewhere".into(), ALL);
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
        let _s = slow.join(&room, ALL);
        let _f = fast.join(&room, ALL);
        for n in 0..MAILBOX as u32 + 10 {
            sender.send(shout("room", n), false);
            assert_eq!(
                fast_rx.try_recv().unwrap().payload.to_string(),
                n.to_string()
            );
        }
        assert_eq!(STATS.get(Stat::BroadcastsDropped), 10);
    }

    thread_local! {
        static CLOCK: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }

    /// What `mailbox` takes from `room`, a period after the last take (on this thread).
    fn take(mailbox: &Mailbox, room: &Arc<str>) -> Vec<Arc<Told>> {
        let now = CLOCK.get().map_or_else(Instant::now, |t| t + PERIOD);
        CLOCK.set(Some(now));
        mailbox.take_presence_at([room].into_iter(), now).0
    }

    /// What `mailbox` is told about `room`, in words: "state 1=a 2=b", "+1=a -2=b".
    fn told(mailbox: &Mailbox, room: &Arc<str>) -> Vec<String> {
        let words = |members: &[Present]| {
            members
                .iter()
                .map(|(m, s)| format!("{m}={}", s.state))
                .collect::<Vec<_>>()
        };
        take(mailbox, room)
            .iter()
            .map(|p| match &p.presence {
                Presence::State { members, .. } => format!("state {}", words(members).join(" ")),
                Presence::Diff { joins, leaves, .. } => {
                    let joins = words(joins).into_iter().map(|w| format!("+{w}"));
                    let leaves = words(leaves).into_iter().map(|w| format!("-{w}"));
                    joins.chain(leaves).collect::<Vec<_>>().join(" ")
                }
            })
            .collect()
    }

    #[test]
    fn presence_is_the_whole_state_on_joining_then_every_change_merged_per_member() {
        static STATS: Stats = Stats::new();
        let hub = Hub::new(&STATS);
        let room: Arc<str> = "room".into();
        let (a, _) = hub.mailbox();
        let (b, _) = hub.mailbox();
        let (watcher, _) = hub.mailbox();
        let (m_a, m_b) = (a.member(), b.member());
        let _a = a.join(&room, ALL);
        a.track("room", None, "\"a1\"".into(), 10).unwrap();
        let seat_b = b.join(&room, ALL);
        assert_eq!(told(&b, &room), [format!("state {m_a}=\"a1\"")]);
        let _w = watcher.join(&room, ALL);
        assert_eq!(told(&watcher, &room), [format!("state {m_a}=\"a1\"")]);
        // Changes it has not taken yet are merged: a's two updates are one change, b's join
        // and leave cancel out.
        a.track("room", None, "\"a2\"".into(), 10).unwrap();
        a.track("room", None, "\"a3\"".into(), 10).unwrap();
        b.track("room", None, "\"b1\"".into(), 10).unwrap();
        b.untrack("room");
        assert_eq!(
            told(&watcher, &room),
            [format!("+{m_a}=\"a3\" -{m_a}=\"a1\"")]
        );
        assert!(told(&watcher, &room).is_empty());
        // A member that leaves the room leaves presence.
        b.track("room", None, "\"b2\"".into(), 10).unwrap();
        assert_eq!(told(&watcher, &room), [format!("+{m_b}=\"b2\"")]);
        drop(seat_b);
        assert_eq!(told(&watcher, &room), [format!("-{m_b}=\"b2\"")]);
    }

    #[test]
    fn seats_owed_the_same_share_one_diff_and_one_far_behind_is_told_the_state() {
        static STATS: Stats = Stats::new();
        let hub = Hub::new(&STATS);
        let room: Arc<str> = "room".into();
        let (a, _) = hub.mailbox();
        let (b, _) = hub.mailbox();
        let (mover, _) = hub.mailbox();
        let _seats = (
            a.join(&room, ALL),
            b.join(&room, ALL),
            mover.join(&room, ALL),
        );
        for m in [&a, &b, &mover] {
            assert_eq!(told(m, &room).len(), 1, "the state first");
        }
        mover.track("room", None, "0".into(), 10).unwrap();
        let (da, db) = (take(&a, &room), take(&b, &room));
        assert!(Arc::ptr_eq(&da[0], &db[0]));
        // Further behind than the log keeps: the whole state, as it is now.
        for n in 1..=LOG_MIN as u32 + 1 {
            mover.track("room", None, n.to_string().into(), 10).unwrap();
        }
        assert_eq!(
            told(&a, &room),
            [format!("state {}={}", mover.member(), LOG_MIN + 1)]
        );
    }

    #[test]
    fn seats_behind_are_handed_the_diffs_built_before_them() {
        static STATS: Stats = Stats::new();
        let hub = Hub::new(&STATS);
        let room: Arc<str> = "room".into();
        let (fast, _) = hub.mailbox();
        let (slow, _) = hub.mailbox();
        let (mover, _) = hub.mailbox();
        let _seats = (
            fast.join(&room, ALL),
            slow.join(&room, ALL),
            mover.join(&room, ALL),
        );
        for m in [&fast, &slow, &mover] {
            told(m, &room);
        }
        let mut fast_told = Vec::new();
        for n in 0..3 {
            mover.track("room", None, n.to_string().into(), 10).unwrap();
            fast_told.extend(take(&fast, &room));
        }
        mover.track("room", None, "3".into(), 10).unwrap();
        // The slow seat is handed the fast one's three diffs, then the change after them.
        let slow_told = take(&slow, &room);
        assert_eq!(slow_told.len(), 4);
        for (a, b) in fast_told.iter().zip(&slow_told) {
            assert!(Arc::ptr_eq(a, b));
        }
        // ... which the fast seat is handed in turn.
        let next = take(&fast, &room);
        assert!(Arc::ptr_eq(&next[0], &slow_told[3]));
    }

    #[test]
    fn changes_within_a_period_of_the_last_cut_wait_for_the_next() {
        static STATS: Stats = Stats::new();
        let hub = Hub::new(&STATS);
        let room: Arc<str> = "room".into();
        let (a, _) = hub.mailbox();
        let (mover, _) = hub.mailbox();
        let _seats = (a.join(&room, ALL), mover.join(&room, ALL));
        let t0 = Instant::now();
        let (state, again) = a.take_presence_at([&room].into_iter(), t0);
        assert_eq!((state.len(), again), (1, None));
        mover.track("room", None, "1".into(), 10).unwrap();
        let soon = t0 + PERIOD / 5;
        let (nothing, again) = a.take_presence_at([&room].into_iter(), soon);
        assert!(nothing.is_empty());
        assert_eq!(again, Some(t0 + PERIOD));
        let (diff, again) = a.take_presence_at([&room].into_iter(), t0 + PERIOD);
        assert!(matches!(&diff[0].presence, Presence::Diff { joins, .. } if joins.len() == 1));
        assert_eq!(again, None);
    }

    #[test]
    fn presence_is_bounded_per_room_and_needs_the_right_to_track() {
        static STATS: Stats = Stats::new();
        let hub = Hub::new(&STATS);
        let room: Arc<str> = "room".into();
        let (a, _) = hub.mailbox();
        let (b, _) = hub.mailbox();
        let (c, _) = hub.mailbox();
        let _a = a.join(&room, ALL);
        let _b = b.join(&room, ALL);
        let _c = c.join(
            &room,
            ChannelRights {
                track: false,
                ..ALL
            },
        );
        a.track("room", None, "1".into(), 1).unwrap();
        assert!(matches!(
            b.track("room", None, "1".into(), 1),
            Err(Refused::PresenceFull(1))
        ));
        // Tracking again under the limit replaces, it does not add.
        a.track("room", None, "2".into(), 1).unwrap();
        assert!(matches!(
            c.track("room", None, "1".into(), 10),
            Err(Refused::TrackForbidden)
        ));
        assert!(matches!(
            c.track("nowhere", None, "1".into(), 10),
            Err(Refused::NotSubscribed)
        ));
        // Joined again without the right to track (a policy changed): no longer present.
        let _again = a.join(
            &room,
            ChannelRights {
                track: false,
                ..ALL
            },
        );
        assert_eq!(hub.rooms()["room"].present.len(), 0);
    }

    #[test]
    fn an_allowance_admits_a_second_s_worth_then_its_rate() {
        let mut allowance = Allowance::default();
        let start = allowance.at;
        let admitted = (0..100).filter(|_| allowance.take_at(10, start)).count();
        assert_eq!(admitted, 10);
        let later = start + std::time::Duration::from_millis(250);
        let admitted = (0..100).filter(|_| allowance.take_at(10, later)).count();
        assert_eq!(admitted, 2);
    }
}
