//! The four kinds of change and sets of them: the one definition the capture path, the
//! catalog, subscriptions and the wire protocol share.

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Insert = 1,
    Update = 2,
    Delete = 3,
    Truncate = 4,
    /// A message on a channel (a relayed NOTIFY, `realtime_send`): not a table's op, so not in
    /// `ALL`, never parsed from a name.
    Message = 5,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    /// The name SQL and the protocol use: `INSERT`, ...
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
            Op::Message => "MESSAGE",
        }
    }
    /// Case-insensitive, as SQL keywords are.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL
            .into_iter()
            .find(|op| op.name().eq_ignore_ascii_case(name))
    }
    /// The byte the queue and spill files store (a table's ops only).
    pub fn from_u8(b: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u8 == b)
    }
}

/// A set of ops: the events a table is watched for, or a subscription asked for.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpSet(u8);

impl OpSet {
    pub const ALL: OpSet = OpSet(0b1111);
    pub const EMPTY: OpSet = OpSet(0);

    pub fn contains(self, op: Op) -> bool {
        self.0 & bit(op) != 0
    }
    pub fn with(self, op: Op) -> OpSet {
        OpSet(self.0 | bit(op))
    }
    pub fn intersection(self, other: OpSet) -> OpSet {
        OpSet(self.0 & other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The ops in the set, in `Op::ALL` order.
    pub fn iter(self) -> impl Iterator<Item = Op> {
        Op::ALL.into_iter().filter(move |op| self.contains(*op))
    }
    /// Names as given (`["insert", "Update"]`), or the first name that is not an op.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<OpSet, String> {
        names.iter().try_fold(OpSet::EMPTY, |set, name| {
            let name = name.as_ref();
            Op::from_name(name.trim())
                .map(|op| set.with(op))
                .ok_or_else(|| name.to_string())
        })
    }
}

impl FromIterator<Op> for OpSet {
    fn from_iter<I: IntoIterator<Item = Op>>(ops: I) -> OpSet {
        ops.into_iter().fold(OpSet::EMPTY, OpSet::with)
    }
}

fn bit(op: Op) -> u8 {
    1 << (op as u8 - 1)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn sets_and_names() {
        assert_eq!(
            OpSet::parse(&["insert", " Update "])
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            [Op::Insert, Op::Update]
        );
        assert_eq!(
            OpSet::parse(&["INSERT", "upsert"]),
            Err("upsert".to_string())
        );
        assert_eq!(Op::ALL.into_iter().collect::<OpSet>(), OpSet::ALL);
        assert!(OpSet::ALL
            .intersection(OpSet::EMPTY.with(Op::Delete))
            .contains(Op::Delete));
        assert!(Op::ALL.iter().all(|op| Op::from_u8(*op as u8) == Some(*op)));
    }
}
