//! Binary layout of captured changes, shared by the writer (capture), the shared queue, spill
//! files and the worker. Plain bytes so that publishing at commit is a memcpy.
//!
//! Event:  op u8 | relid u32 | schema len u16 + bytes | table len u16 + bytes |
//!         new len u32 + bytes | old len u32 + bytes            (len u32::MAX = absent)
//! Record (one per queue entry): kind u8 | xid u32 | commit_time i64 | count u32 | body
//!   TXN:      body = `count` events
//!   SPILLED:  body = path of a file holding `count` events
//!   PENDING / PENDING_SPILLED: as TXN / SPILLED, reserved at pre-commit; the writer rewrites the
//!             kind and commit time in place once it has committed (or sets ABORTED)
//!   PREPARED: as TXN, delivered only once `xid` commits (`commit_time` unknown, 0)
//!   PREPARED_SPILLED: as SPILLED, likewise
//!   GAP:      body = lost transactions u64 | lost events u64

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Insert = 1,
    Update = 2,
    Delete = 3,
    Truncate = 4,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        }
    }
    pub fn from_name(name: &str) -> Option<Op> {
        [Op::Insert, Op::Update, Op::Delete, Op::Truncate]
            .into_iter()
            .find(|op| op.name().eq_ignore_ascii_case(name))
    }
    fn from_u8(b: u8) -> Option<Op> {
        [Op::Insert, Op::Update, Op::Delete, Op::Truncate]
            .into_iter()
            .find(|op| *op as u8 == b)
    }
    /// Bit for sets of ops (subscriptions, watched events).
    pub fn bit(self) -> u8 {
        1 << (self as u8 - 1)
    }
}

pub const ALL_OPS: u8 = 0b1111;

const ABSENT: u32 = u32::MAX;

pub fn encode_event(
    buf: &mut Vec<u8>,
    op: Op,
    relid: u32,
    schema: &str,
    table: &str,
    new: Option<&[u8]>,
    old: Option<&[u8]>,
) {
    buf.push(op as u8);
    buf.extend_from_slice(&relid.to_le_bytes());
    for name in [schema, table] {
        buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
    }
    for image in [new, old] {
        match image {
            Some(bytes) => {
                buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                buf.extend_from_slice(bytes);
            }
            None => buf.extend_from_slice(&ABSENT.to_le_bytes()),
        }
    }
}

/// A decoded event borrowing from the buffer it was read from.
#[derive(Debug, PartialEq)]
pub struct EventRef<'a> {
    pub op: Op,
    pub relid: u32,
    pub schema: &'a str,
    pub table: &'a str,
    pub new: Option<&'a str>,
    pub old: Option<&'a str>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn image(&mut self) -> Option<Option<&'a str>> {
        match self.u32()? {
            ABSENT => Some(None),
            n => Some(Some(self.str(n as usize)?)),
        }
    }
}

/// Decode one event at the start of `buf`; returns it and the bytes it used.
pub fn decode_event(buf: &[u8]) -> Option<(EventRef<'_>, usize)> {
    let mut r = Reader { buf, at: 0 };
    let op = Op::from_u8(r.u8()?)?;
    let relid = r.u32()?;
    let n = r.u16()? as usize;
    let schema = r.str(n)?;
    let n = r.u16()? as usize;
    let table = r.str(n)?;
    let new = r.image()?;
    let old = r.image()?;
    Some((
        EventRef {
            op,
            relid,
            schema,
            table,
            new,
            old,
        },
        r.at,
    ))
}

/// Iterate the events of a TXN body or a spill file's contents.
pub fn events(mut buf: &[u8]) -> impl Iterator<Item = EventRef<'_>> {
    std::iter::from_fn(move || {
        let (ev, used) = decode_event(buf)?;
        buf = &buf[used..];
        Some(ev)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Txn = 1,
    Spilled = 2,
    Prepared = 3,
    PreparedSpilled = 4,
    Gap = 5,
    Pending = 6,
    PendingSpilled = 7,
    Aborted = 8,
}

impl RecordKind {
    /// What a pending record becomes once its transaction has committed.
    pub fn committed(self) -> RecordKind {
        match self {
            RecordKind::Pending => RecordKind::Txn,
            RecordKind::PendingSpilled => RecordKind::Spilled,
            other => other,
        }
    }
}

/// Kind and xid of a record still awaiting its transaction's outcome, read from the first bytes
/// of the record; `None` for a settled record (or too few bytes).
pub fn pending_header(header: &[u8]) -> Option<(RecordKind, u32)> {
    let kind = match *header.first()? {
        k if k == RecordKind::Pending as u8 => RecordKind::Pending,
        k if k == RecordKind::PendingSpilled as u8 => RecordKind::PendingSpilled,
        _ => return None,
    };
    Some((kind, u32::from_le_bytes(header.get(1..5)?.try_into().ok()?)))
}

/// Offset of the commit time within a record.
pub const COMMIT_TIME_AT: usize = 5;

pub const RECORD_HEADER_LEN: usize = 1 + 4 + 8 + 4;

pub fn record_header(
    kind: RecordKind,
    xid: u32,
    commit_time: i64,
    count: u32,
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0] = kind as u8;
    h[1..5].copy_from_slice(&xid.to_le_bytes());
    h[5..13].copy_from_slice(&commit_time.to_le_bytes());
    h[13..17].copy_from_slice(&count.to_le_bytes());
    h
}

pub fn gap_body(lost_txns: u64, lost_events: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&lost_txns.to_le_bytes());
    b[8..].copy_from_slice(&lost_events.to_le_bytes());
    b
}

#[derive(Debug)]
pub enum Record<'a> {
    Txn {
        xid: u32,
        commit_time: i64,
        count: u32,
        events: &'a [u8],
    },
    Spilled {
        xid: u32,
        commit_time: i64,
        count: u32,
        path: &'a str,
    },
    Prepared {
        xid: u32,
        count: u32,
        events: &'a [u8],
    },
    PreparedSpilled {
        xid: u32,
        count: u32,
        path: &'a str,
    },
    Gap {
        lost_events: u64,
    },
    /// Pending: not yet known to have committed. Aborted: never to be delivered.
    Pending,
    Aborted,
}

pub fn decode_record(buf: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader { buf, at: 0 };
    let kind = r.u8()?;
    let xid = r.u32()?;
    let commit_time = r.u64()? as i64;
    let count = r.u32()?;
    let body = &buf[RECORD_HEADER_LEN..];
    Some(match kind {
        1 => Record::Txn {
            xid,
            commit_time,
            count,
            events: body,
        },
        2 => Record::Spilled {
            xid,
            commit_time,
            count,
            path: std::str::from_utf8(body).ok()?,
        },
        3 => Record::Prepared {
            xid,
            count,
            events: body,
        },
        4 => Record::PreparedSpilled {
            xid,
            count,
            path: std::str::from_utf8(body).ok()?,
        },
        5 => {
            let _lost_txns = r.u64()?;
            Record::Gap {
                lost_events: r.u64()?,
            }
        }
        6 | 7 => Record::Pending,
        8 => Record::Aborted,
        _ => return None,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn event_round_trip() {
        let mut buf = Vec::new();
        encode_event(
            &mut buf,
            Op::Update,
            42,
            "public",
            "défauts",
            Some(b"{\"a\":1}"),
            Some(b"{\"a\":0}"),
        );
        encode_event(&mut buf, Op::Truncate, 42, "public", "t", None, None);
        let got: Vec<_> = events(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].table, "défauts");
        assert_eq!(got[0].new, Some("{\"a\":1}"));
        assert_eq!(got[0].old, Some("{\"a\":0}"));
        assert_eq!(got[1].op, Op::Truncate);
        assert_eq!(got[1].new, None);
    }

    #[test]
    fn truncated_input_is_rejected_not_misread() {
        let mut buf = Vec::new();
        encode_event(&mut buf, Op::Insert, 1, "s", "t", Some(b"{}"), None);
        for cut in 0..buf.len() {
            assert!(decode_event(&buf[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn pending_headers_are_recognised() {
        let header = record_header(RecordKind::PendingSpilled, 4242, 0, 3);
        assert_eq!(
            pending_header(&header),
            Some((RecordKind::PendingSpilled, 4242))
        );
        assert_eq!(
            pending_header(&record_header(RecordKind::Txn, 4242, 0, 3)),
            None
        );
    }

    #[test]
    fn record_round_trip() {
        let mut rec = record_header(RecordKind::Gap, 0, 0, 0).to_vec();
        rec.extend_from_slice(&gap_body(3, 70));
        match decode_record(&rec) {
            Some(Record::Gap { lost_events: 70 }) => {}
            other => panic!("{other:?}"),
        }
    }
}
