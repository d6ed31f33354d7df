//! Binary layout of captured changes, shared by the writer (capture), the shared queue, spill
//! files and the worker. Plain bytes so that publishing at commit is a memcpy.
//!
//! Event:  op u8 | relid u32 | schema len u16 + bytes | table len u16 + bytes |
//!         new len u32 + bytes | old len u32 + bytes            (len u32::MAX = absent)
//!         The images are JSON text rendered by the writer.
//! Shape:  SHAPE u8 | relid u32 | schema | table (as above) | shape len u32 + bytes
//!         Not a change: how the TUPLE events after it are to be rendered (see `shape`).
//! Tuple:  TUPLE|op u8 | new len u32 + bytes | old len u32 + bytes
//!         A change whose images are raw tuples of the last shape, rendered by the worker.
//! End:    END u8 | relid u32 | reason u8
//!         Not a change: the table was dropped or unwatched (`realtime_core::change::EndReason`).
//! Message: MESSAGE u8 | topic (as a name) | event (as a name) | sender pid u32 |
//!         payload len u32 + bytes (JSON text). A change of its own: `realtime_send()`.
//! Catalog: CATALOG u8
//!         Not a change: the transaction changed who may see what (GRANT, REVOKE, a policy,
//!         row security, a role); subscribers are authorized again at this point.
//! Record (one per queue entry): kind u8 | xid u32 | commit_time i64 | count u32 | body
//!   TXN:      body = `count` events
//!   SPILLED:  body = path of a file holding `count` events
//!   PENDING / PENDING_SPILLED: as TXN / SPILLED, reserved at pre-commit; the writer rewrites the
//!             kind and commit time in place once it has committed (or sets ABORTED)
//!   (Prepared transactions wait in files until COMMIT PREPARED: `capture::prepared`.)
//!   GAP:      body = lost transactions u64 | lost events u64

pub use realtime_core::ops::Op;

const ABSENT: u32 = u32::MAX;
const SHAPE: u8 = 0x40;
const TUPLE: u8 = 0x20;
const END: u8 = 0x10;
const CATALOG: u8 = 0x08;
const MESSAGE: u8 = 0x80;

/// A name as these layouts store it, `len u16 + bytes` (`Reader::name` reads it back).
pub fn put_name(buf: &mut Vec<u8>, name: &[u8]) {
    buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
    buf.extend_from_slice(name);
}

fn put_image(buf: &mut Vec<u8>, image: Option<&[u8]>) {
    match image {
        Some(bytes) => {
            buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
        None => buf.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

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
    put_name(buf, schema.as_bytes());
    put_name(buf, table.as_bytes());
    put_image(buf, new);
    put_image(buf, old);
}

pub fn encode_shape(buf: &mut Vec<u8>, relid: u32, schema: &str, table: &str, shape: &[u8]) {
    buf.push(SHAPE);
    buf.extend_from_slice(&relid.to_le_bytes());
    put_name(buf, schema.as_bytes());
    put_name(buf, table.as_bytes());
    put_image(buf, Some(shape));
}

pub fn encode_tuple(buf: &mut Vec<u8>, op: Op, new: Option<&[u8]>, old: Option<&[u8]>) {
    buf.push(TUPLE | op as u8);
    put_image(buf, new);
    put_image(buf, old);
}

pub fn encode_catalog(buf: &mut Vec<u8>) {
    buf.push(CATALOG);
}

pub fn encode_message(buf: &mut Vec<u8>, topic: &str, event: &str, sender: u32, payload: &[u8]) {
    buf.push(MESSAGE);
    put_name(buf, topic.as_bytes());
    put_name(buf, event.as_bytes());
    buf.extend_from_slice(&sender.to_le_bytes());
    put_image(buf, Some(payload));
}

pub fn encode_end(buf: &mut Vec<u8>, relid: u32, reason: u8) {
    buf.push(END);
    buf.extend_from_slice(&relid.to_le_bytes());
    buf.push(reason);
}

/// One entry of a transaction's body, borrowing from the buffer it was read from.
#[derive(Debug, PartialEq)]
pub enum Item<'a> {
    Change(EventRef<'a>),
    Shape(ShapeRef<'a>),
    Tuple(TupleRef<'a>),
    End { relid: u32, reason: u8 },
    Catalog,
    Message(MessageRef<'a>),
}

/// A message to a topic, its payload JSON text.
#[derive(Debug, PartialEq)]
pub struct MessageRef<'a> {
    pub topic: &'a str,
    pub event: &'a str,
    pub sender: u32,
    pub payload: &'a str,
}

/// A change with JSON images.
#[derive(Debug, PartialEq)]
pub struct EventRef<'a> {
    pub op: Op,
    pub relid: u32,
    pub schema: &'a str,
    pub table: &'a str,
    pub new: Option<&'a str>,
    pub old: Option<&'a str>,
}

/// Which table the tuples that follow belong to, and how to render them.
#[derive(Debug, PartialEq)]
pub struct ShapeRef<'a> {
    pub relid: u32,
    pub schema: &'a str,
    pub table: &'a str,
    pub shape: &'a [u8],
}

/// A change with raw tuple images, of the last shape.
#[derive(Debug, PartialEq)]
pub struct TupleRef<'a> {
    pub op: Op,
    pub new: Option<&'a [u8]>,
    pub old: Option<&'a [u8]>,
}

/// Reads the little-endian fields these layouts are made of; `None` past the end.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
    pub fn name(&mut self) -> Option<&'a str> {
        let n = self.u16()? as usize;
        self.str(n)
    }
    fn bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u32()? {
            ABSENT => Some(None),
            n => Some(Some(self.take(n as usize)?)),
        }
    }
    fn image(&mut self) -> Option<Option<&'a str>> {
        match self.bytes()? {
            None => Some(None),
            Some(b) => Some(Some(std::str::from_utf8(b).ok()?)),
        }
    }
}

/// Decode one item at the start of `buf`; returns it and the bytes it used.
pub fn decode_event(buf: &[u8]) -> Option<(Item<'_>, usize)> {
    let mut r = Reader { buf, at: 0 };
    let code = r.u8()?;
    let item = if code == CATALOG {
        Item::Catalog
    } else if code == MESSAGE {
        Item::Message(MessageRef {
            topic: r.name()?,
            event: r.name()?,
            sender: r.u32()?,
            payload: r.image()??,
        })
    } else if code == END {
        Item::End {
            relid: r.u32()?,
            reason: r.u8()?,
        }
    } else if code == SHAPE {
        Item::Shape(ShapeRef {
            relid: r.u32()?,
            schema: r.name()?,
            table: r.name()?,
            shape: r.bytes()??,
        })
    } else if code & TUPLE != 0 {
        Item::Tuple(TupleRef {
            op: Op::from_u8(code & !TUPLE)?,
            new: r.bytes()?,
            old: r.bytes()?,
        })
    } else {
        Item::Change(EventRef {
            op: Op::from_u8(code)?,
            relid: r.u32()?,
            schema: r.name()?,
            table: r.name()?,
            new: r.image()?,
            old: r.image()?,
        })
    };
    Some((item, r.at))
}

/// Iterate the items of a TXN body or a spill file's contents.
pub fn events(mut buf: &[u8]) -> impl Iterator<Item = Item<'_>> {
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
    Gap = 5,
    Pending = 6,
    PendingSpilled = 7,
    Aborted = 8,
}

impl RecordKind {
    const ALL: [RecordKind; 6] = [
        RecordKind::Txn,
        RecordKind::Spilled,
        RecordKind::Gap,
        RecordKind::Pending,
        RecordKind::PendingSpilled,
        RecordKind::Aborted,
    ];

    fn from_u8(b: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// What a pending record becomes once its transaction has committed.
    pub fn committed(self) -> RecordKind {
        match self {
            RecordKind::Pending => RecordKind::Txn,
            RecordKind::PendingSpilled => RecordKind::Spilled,
            other => other,
        }
    }
}

/// A record still awaiting its transaction's outcome, read from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingHeader {
    pub kind: RecordKind,
    pub xid: u32,
    /// Where the WAL was being inserted when the record was reserved (0: not known, a record
    /// of an earlier release); see `COMMIT_TIME_AT`.
    pub wal_at: u64,
}

/// The header of a record still awaiting its transaction's outcome; `None` for a settled
/// record (or too few bytes).
pub fn pending_header(header: &[u8]) -> Option<PendingHeader> {
    let kind = RecordKind::from_u8(*header.first()?)
        .filter(|k| matches!(k, RecordKind::Pending | RecordKind::PendingSpilled))?;
    let at = COMMIT_TIME_AT;
    Some(PendingHeader {
        kind,
        xid: u32::from_le_bytes(header.get(1..5)?.try_into().ok()?),
        wal_at: u64::from_le_bytes(header.get(at..at + 8)?.try_into().ok()?),
    })
}

/// Offset of the commit time within a record. Until its transaction settles it, a pending
/// record holds there the WAL insert position at its reservation: its commit record comes
/// after that position, so a crash recovery that ended before it proves the transaction never
/// committed (its xid may then be handed out again, and the commit log answer for another).
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
    Gap {
        lost_events: u64,
    },
    /// Pending: not yet known to have committed. Aborted: never to be delivered.
    Pending,
    Aborted,
}

/// The spill file a record's changes are in, committed or not.
pub fn spill_path(record: &[u8]) -> Option<&str> {
    match RecordKind::from_u8(*record.first()?)? {
        RecordKind::Spilled | RecordKind::PendingSpilled => {
            std::str::from_utf8(record.get(RECORD_HEADER_LEN..)?).ok()
        }
        _ => None,
    }
}

pub fn decode_record(buf: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader { buf, at: 0 };
    let kind = RecordKind::from_u8(r.u8()?)?;
    let xid = r.u32()?;
    let commit_time = r.u64()? as i64;
    let count = r.u32()?;
    let body = &buf[RECORD_HEADER_LEN..];
    Some(match kind {
        RecordKind::Txn => Record::Txn {
            xid,
            commit_time,
            count,
            events: body,
        },
        RecordKind::Spilled => Record::Spilled {
            xid,
            commit_time,
            count,
            path: std::str::from_utf8(body).ok()?,
        },
        RecordKind::Gap => {
            let _lost_txns = r.u64()?;
            Record::Gap {
                lost_events: r.u64()?,
            }
        }
        RecordKind::Pending | RecordKind::PendingSpilled => Record::Pending,
        RecordKind::Aborted => Record::Aborted,
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
        encode_shape(&mut buf, 7, "s", "rows", b"shape");
        encode_tuple(&mut buf, Op::Delete, None, Some(&[0, 1, 2]));
        encode_message(&mut buf, "orders", "shipped", 77, br#"{"id":1}"#);
        let got: Vec<_> = events(&buf).collect();
        assert_eq!(got.len(), 5);
        assert_eq!(
            got[4],
            Item::Message(MessageRef {
                topic: "orders",
                event: "shipped",
                sender: 77,
                payload: r#"{"id":1}"#
            })
        );
        let Item::Change(first) = &got[0] else {
            panic!("{:?}", got[0])
        };
        assert_eq!(first.table, "défauts");
        assert_eq!(first.new, Some("{\"a\":1}"));
        assert_eq!(first.old, Some("{\"a\":0}"));
        assert!(matches!(&got[1], Item::Change(e) if e.op == Op::Truncate && e.new.is_none()));
        assert_eq!(
            got[2],
            Item::Shape(ShapeRef {
                relid: 7,
                schema: "s",
                table: "rows",
                shape: b"shape"
            })
        );
        assert_eq!(
            got[3],
            Item::Tuple(TupleRef {
                op: Op::Delete,
                new: None,
                old: Some(&[0, 1, 2])
            })
        );
    }

    #[test]
    fn truncated_input_is_rejected_not_misread() {
        let mut buf = Vec::new();
        encode_event(&mut buf, Op::Insert, 1, "s", "t", Some(b"{}"), None);
        let first = buf.len();
        encode_shape(&mut buf, 1, "s", "t", b"x");
        let second = buf.len();
        encode_tuple(&mut buf, Op::Insert, Some(b"xy"), None);
        for (start, end) in [(0, first), (first, second), (second, buf.len())] {
            assert_eq!(
                decode_event(&buf[start..end]).map(|(_, n)| n),
                Some(end - start)
            );
            for cut in start..end {
                assert!(decode_event(&buf[start..cut]).is_none(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn pending_headers_are_recognised() {
        let header = record_header(RecordKind::PendingSpilled, 4242, 0x1_0000_0028, 3);
        assert_eq!(
            pending_header(&header),
            Some(PendingHeader {
                kind: RecordKind::PendingSpilled,
                xid: 4242,
                wal_at: 0x1_0000_0028,
            })
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
