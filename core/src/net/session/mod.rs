//! One session loop per wire protocol: each reads its client's messages, writes what the
//! connection's `SubscriptionSet` decides to send in its own frames, and keeps the heartbeat.

pub mod native;
