//! Snapshots a subscription stitches its stream to: which committed transactions a snapshot
//! already contains (`Xids`, parsed from `pg_snapshot` text, which is also the token of
//! `realtime_snapshot_token()`), what a snapshot reader is asked to read (`Spec`), and the
//! frames it sends back over its socket (`Frame`).
//!
//! A change is in a snapshot exactly when its transaction is visible to it: committed before
//! the snapshot was taken. That is decided by transaction id, as PostgreSQL decides it, never by
//! time or position.

use serde::{Deserialize, Serialize};

/// Most in-progress transactions a token may list: far above any real server's
/// `max_connections`, low enough that a hostile token cannot cost much to search.
const MAX_XIP: usize = 100_000;

/// The transactions a snapshot sees: everything that committed before `xmin`, and whatever
/// committed before `xmax` and is not in `xip` (in progress when the snapshot was taken).
/// Full (64-bit) transaction ids, as `pg_current_snapshot()` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xids {
    xmin: u64,
    xmax: u64,
    /// Sorted.
    xip: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid snapshot token: {0}; use the text SELECT realtime_snapshot_token() returned")]
pub struct TokenError(&'static str);

impl Xids {
    /// Parse `pg_snapshot` text, `xmin:xmax:xip,xip,...`.
    pub fn parse(text: &str) -> Result<Xids, TokenError> {
        let mut parts = text.trim().splitn(3, ':');
        let mut number = |what| {
            parts
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(TokenError(what))
        };
        let xmin = number("xmin is not a number")?;
        let xmax = number("xmax is not a number")?;
        let list = parts.next().ok_or(TokenError("no list of transactions"))?;
        let mut xip = Vec::new();
        for xid in list.split(',').filter(|s| !s.is_empty()) {
            if xip.len() == MAX_XIP {
                return Err(TokenError("too many transactions in progress"));
            }
            let xid = xid
                .parse::<u64>()
                .map_err(|_| TokenError("a transaction id is not a number"))?;
            if xid < xmin || xid >= xmax {
                return Err(TokenError(
                    "a transaction in progress is outside xmin..xmax",
                ));
            }
            xip.push(xid);
        }
        if xmin > xmax || xmax >= 1 << 63 {
            return Err(TokenError("xmin is after xmax"));
        }
        xip.sort_unstable();
        Ok(Xids { xmin, xmax, xip })
    }

    /// The token naming this snapshot (its `pg_snapshot` text).
    pub fn token(&self) -> String {
        let xip: Vec<String> = self.xip.iter().map(u64::to_string).collect();
        format!("{}:{}:{}", self.xmin, self.xmax, xip.join(","))
    }

    /// The oldest transaction still running when the snapshot was taken, as a 32-bit id:
    /// every transaction the snapshot does not see has an id at or after it.
    pub fn xmin32(&self) -> u32 {
        self.xmin as u32
    }

    /// Whether the committed transaction `xid` (32 bits, as changes carry it) is visible to the
    /// snapshot: its changes are already in what was read. Exact for ids within 2^31 of `xmax`.
    pub fn contains(&self, xid: u32) -> bool {
        if xid == 0 {
            return false;
        }
        let full = self.full(xid);
        full < self.xmin as i64
            || (full < self.xmax as i64 && self.xip.binary_search(&(full as u64)).is_err())
    }

    /// Whether `xid` is so far past the snapshot that 32-bit comparisons with it will soon wrap:
    /// every transaction the snapshot saw was published long before.
    pub fn long_past(&self, xid: u32) -> bool {
        self.full(xid) - self.xmax as i64 > 1 << 30
    }

    fn full(&self, xid: u32) -> i64 {
        self.xmax as i64 + xid.wrapping_sub(self.xmax as u32) as i32 as i64
    }
}

/// A sort key for a snapshot: `column`, `column.desc`, `column.asc.nullsfirst` (PostgREST's
/// `order` syntax), comma-separated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBy {
    pub column: String,
    pub descending: bool,
    /// `None`: PostgreSQL's default for the direction.
    pub nulls_first: Option<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid order \"{0}\": use column[.asc|.desc][.nullsfirst|.nullslast], comma-separated")]
pub struct OrderError(pub String);

/// Most sort keys an `order` may name.
const MAX_ORDER_KEYS: usize = 16;

pub fn parse_order(text: &str) -> Result<Vec<OrderBy>, OrderError> {
    let bad = || OrderError(text.chars().take(100).collect());
    let mut keys = Vec::new();
    for key in text.split(',') {
        let mut parts = key.trim().split('.');
        let column = parts.next().filter(|c| !c.is_empty()).ok_or_else(bad)?;
        let mut order = OrderBy {
            column: column.to_string(),
            descending: false,
            nulls_first: None,
        };
        for modifier in parts {
            match modifier {
                "asc" => order.descending = false,
                "desc" => order.descending = true,
                "nullsfirst" => order.nulls_first = Some(true),
                "nullslast" => order.nulls_first = Some(false),
                _ => return Err(bad()),
            }
        }
        // Refused as soon as there are too many: a message of commas must not cost more.
        if keys.len() == MAX_ORDER_KEYS {
            return Err(bad());
        }
        keys.push(order);
    }
    Ok(keys)
}

/// What a snapshot reader reads: the table's rows visible to `role` with `claims`, only
/// `columns` (all when `None`), in `order`, at most `limit` (only when no filter applies: a
/// filter is applied by the session, which then stops reading).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub role: String,
    pub claims: String,
    pub relid: u32,
    pub schema: String,
    pub table: String,
    pub columns: Option<Vec<String>>,
    pub order: Vec<OrderBy>,
    pub limit: Option<u64>,
}

/// What a snapshot reader sends, each as `kind u8 | len u32 | payload`.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The snapshot it reads in (`pg_snapshot` text): first.
    Snapshot(String),
    /// Rows, each `len u32 | JSON text` (`row_to_json`).
    Rows(Vec<u8>),
    /// All rows were sent: how many.
    End(u64),
    /// Reading failed: why.
    Failed(String),
}

const SNAPSHOT: u8 = b'S';
const ROWS: u8 = b'R';
const END: u8 = b'E';
const FAILED: u8 = b'X';
/// Largest frame a reader sends (a page is cut well before; one huge row may still be this big).
pub const MAX_FRAME: u32 = 1 << 30;

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Snapshot(text) => (SNAPSHOT, text.as_bytes()),
            Frame::Rows(rows) => (ROWS, rows),
            Frame::End(n) => return frame(END, &n.to_le_bytes()),
            Frame::Failed(why) => (FAILED, why.as_bytes()),
        };
        frame(kind, payload)
    }

    pub fn decode(kind: u8, payload: Vec<u8>) -> Option<Frame> {
        let text = |p: Vec<u8>| String::from_utf8(p).ok();
        Some(match kind {
            SNAPSHOT => Frame::Snapshot(text(payload)?),
            ROWS => Frame::Rows(payload),
            END => Frame::End(u64::from_le_bytes(payload.try_into().ok()?)),
            FAILED => Frame::Failed(text(payload)?),
            _ => return None,
        })
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Append one row to a `Frame::Rows` payload.
pub fn push_row(page: &mut Vec<u8>, row: &[u8]) {
    page.extend_from_slice(&(row.len() as u32).to_le_bytes());
    page.extend_from_slice(row);
}

/// The rows of a `Frame::Rows` payload; stops at a malformed one.
pub fn rows(page: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = page;
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let row = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(row)
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn visibility_follows_xmin_xmax_and_the_running_list() {
        let s = Xids::parse("100:110:103,105").unwrap();
        assert!(s.contains(99) && s.contains(104) && s.contains(109));
        assert!(!s.contains(103) && !s.contains(105) && !s.contains(110) && !s.contains(0));
        assert_eq!(s.token(), "100:110:103,105");
        assert_eq!(Xids::parse(&s.token()), Ok(s));
        // Full ids past 2^32: 32-bit ids are placed relative to xmax.
        let epoch = 5u64 << 32;
        let s = Xids::parse(&format!("{}:{}:", epoch + 10, epoch + 20)).unwrap();
        assert!(s.contains(9) && s.contains(15) && !s.contains(25));
        assert!(s.contains(u32::MAX)); // the previous epoch's last id
        assert!(!s.long_past(25) && s.long_past(20 + (1 << 30) + 1));
    }

    #[test]
    fn hostile_tokens_are_refused() {
        for bad in [
            "",
            "1",
            "1:2",
            "a:2:",
            "5:3:",
            "1:5:7",
            "1:5:x",
            "1:18446744073709551615:",
        ] {
            assert!(Xids::parse(bad).is_err(), "{bad}");
        }
        let many = (0..=MAX_XIP)
            .map(|i| (i + 1).to_string())
            .collect::<Vec<_>>();
        assert!(Xids::parse(&format!("1:{}:{}", MAX_XIP + 5, many.join(","))).is_err());
    }

    #[test]
    fn orders_and_frames() {
        assert_eq!(
            parse_order("score.desc.nullslast, id").unwrap(),
            [
                OrderBy {
                    column: "score".into(),
                    descending: true,
                    nulls_first: Some(false)
                },
                OrderBy {
                    column: "id".into(),
                    descending: false,
                    nulls_first: None
                }
            ]
        );
        assert!(parse_order("id.sideways").is_err() && parse_order("a,,b").is_err());
        let keys = |n: usize| vec!["id"; n].join(",");
        assert!(
            parse_order(&keys(MAX_ORDER_KEYS)).is_ok()
                && parse_order(&keys(MAX_ORDER_KEYS + 1)).is_err()
        );
        let mut page = Vec::new();
        push_row(&mut page, b"{\"a\":\n1}");
        push_row(&mut page, b"{}");
        assert_eq!(
            rows(&page).collect::<Vec<_>>(),
            [&b"{\"a\":\n1}"[..], b"{}"]
        );
        let f = Frame::Rows(page.clone()).encode();
        assert_eq!(
            Frame::decode(f[0], f[5..].to_vec()),
            Some(Frame::Rows(page))
        );
        let f = Frame::End(7).encode();
        assert_eq!(Frame::decode(f[0], f[5..].to_vec()), Some(Frame::End(7)));
    }
}
