//! What of a table a subscriber may see, as the worker worked it out for its role and claims:
//! which columns (column privileges) and which rows (row-level security).
//!
//! Most policies compare a column with an expression of the claims alone. The worker evaluates
//! the claim side once, when the subscription is made, so such a policy arrives here as a
//! `Rule` over column values, and judging a change costs a few hash lookups and no query.
//! Policies that need the database (sub-selects, functions of the row) are judged by the worker
//! for each batch, once per distinct role and claims: `Checked`, with verdicts on the change.

use crate::change::{AudienceId, Change};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

type Row = Map<String, Value>;

/// Which rows a subscription may see.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub enum RowAccess {
    /// Row security does not apply to this role (disabled, exempt owner, BYPASSRLS).
    All,
    /// The table's policies for this role and claims, compiled.
    Rule(Arc<Rule>),
    /// The worker judges each change for this audience (one role and claims) and attaches
    /// its verdict (`Change::verdict`).
    Checked(AudienceId),
}

/// How an audience judged apart is judged: as whom, and the statement the worker runs for it
/// (its `$1` the changes' row images as a JSON array; it returns the ordinals that pass).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ApartSpec {
    /// The table and role, for messages.
    pub name: String,
    pub role: u32,
    pub claims: String,
    pub sql: String,
}

/// A policy condition with the claims already evaluated, in SQL's three-valued logic.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    /// A condition of the claims alone, evaluated: true, false or NULL.
    Known(Option<bool>),
    /// `column = ANY(values)` (`column = value` has one value): the column's JSON value must
    /// be one of `values`, each canonical JSON text. `values: None` is a NULL array (or value).
    In {
        column: String,
        values: Option<HashSet<String>>,
        /// The list held a NULL: a non-match is NULL rather than false.
        has_null: bool,
    },
}

impl Rule {
    /// Whether the row passes: true only, as a WHERE clause takes it.
    pub fn admits(&self, row: Option<&Row>) -> bool {
        row.is_some_and(|row| self.eval(row) == Some(true))
    }

    /// Column values one of which a row must hold for the rule to admit it, as (column,
    /// canonical JSON text); `None` when there is no such list (`NOT`, `true`). An empty list:
    /// no row is ever admitted. The fan-out indexes subscribers by these values.
    pub fn keys(&self) -> Option<Vec<(&str, &str)>> {
        match self {
            Rule::Known(Some(true)) | Rule::Not(_) => None,
            Rule::Known(_) | Rule::In { values: None, .. } => Some(Vec::new()),
            Rule::In {
                column,
                values: Some(values),
                ..
            } => Some(
                values
                    .iter()
                    .map(|v| (column.as_str(), v.as_str()))
                    .collect(),
            ),
            // Every conjunct must hold: the shortest list of any of them will do.
            Rule::And(rules) => rules.iter().filter_map(Rule::keys).min_by_key(Vec::len),
            // One disjunct must hold: all of their lists, if each has one.
            Rule::Or(rules) => rules
                .iter()
                .map(Rule::keys)
                .collect::<Option<Vec<_>>>()
                .map(|lists| lists.concat()),
        }
    }

    fn eval(&self, row: &Row) -> Option<bool> {
        match self {
            Rule::Known(v) => *v,
            Rule::Not(r) => r.eval(row).map(|v| !v),
            Rule::And(rules) => combine(rules, row, false),
            Rule::Or(rules) => combine(rules, row, true),
            Rule::In {
                column,
                values,
                has_null,
            } => {
                let values = values.as_ref()?;
                if values.is_empty() && !has_null {
                    return Some(false);
                }
                let value = row.get(column).filter(|v| !v.is_null())?;
                if values.contains(&value.to_string()) {
                    Some(true)
                } else if *has_null {
                    None
                } else {
                    Some(false)
                }
            }
        }
    }
}

/// AND (`decisive` false) or OR (`decisive` true) in three-valued logic: a decisive operand
/// decides; otherwise any NULL makes NULL.
fn combine(rules: &[Rule], row: &Row, decisive: bool) -> Option<bool> {
    let mut unknown = false;
    for r in rules {
        match r.eval(row) {
            Some(v) if v == decisive => return Some(decisive),
            None => unknown = true,
            Some(_) => {}
        }
    }
    (!unknown).then_some(!decisive)
}

/// Which columns a subscription may see: `None` for all of them.
pub type Columns = Option<Arc<HashSet<String>>>;

/// What a subscriber may see of one change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub new: bool,
    pub old: bool,
    pub failed: bool,
}

impl RowAccess {
    /// Which of the change's row images this subscriber may see.
    pub fn judge(&self, change: &Change) -> Seen {
        match self {
            RowAccess::All => Seen {
                new: true,
                old: true,
                failed: false,
            },
            RowAccess::Rule(rule) => Seen {
                new: rule.admits(change.new_row()),
                old: rule.admits(change.old_row()),
                failed: false,
            },
            RowAccess::Checked(audience) => match change.verdict(*audience) {
                Some(v) => Seen {
                    new: v.new_visible,
                    old: v.old_visible,
                    // Still to be judged apart here means the judge could not be asked.
                    failed: v.failed || v.apart,
                },
                // Not judged for this audience: it did not exist when the change was
                // published, so the change predates the subscription.
                None => Seen {
                    new: false,
                    old: false,
                    failed: false,
                },
            },
        }
    }
}

/// `row` with only the `columns` a subscriber may see, as JSON text.
pub fn project(row: &Row, columns: &HashSet<String>) -> String {
    let kept: Map<String, Value> = row
        .iter()
        .filter(|(k, _)| columns.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept).to_string()
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    fn is_in(column: &str, values: &[&str], has_null: bool) -> Rule {
        Rule::In {
            column: column.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
            has_null,
        }
    }

    #[test]
    fn three_valued_logic() {
        let r = row(json!({"owner": "alice", "team": 3, "gone": null}));
        let owner = is_in("owner", &["\"alice\""], false);
        assert_eq!(owner.eval(&r), Some(true));
        assert_eq!(is_in("team", &["3", "4"], false).eval(&r), Some(true));
        assert_eq!(is_in("team", &["4"], false).eval(&r), Some(false));
        assert_eq!(is_in("team", &["4"], true).eval(&r), None);
        assert_eq!(is_in("gone", &["4"], false).eval(&r), None);
        // NULL = ANY('{}') is false, not NULL.
        assert_eq!(is_in("gone", &[], false).eval(&r), Some(false));
        let null_list = Rule::In {
            column: "team".into(),
            values: None,
            has_null: false,
        };
        assert_eq!(null_list.eval(&r), None);
        let unknown = Rule::Known(None);
        let no = Rule::Known(Some(false));
        assert_eq!(
            Rule::And(vec![unknown.clone(), no.clone()]).eval(&r),
            Some(false)
        );
        assert_eq!(
            Rule::And(vec![unknown.clone(), owner.clone()]).eval(&r),
            None
        );
        assert_eq!(
            Rule::Or(vec![unknown.clone(), owner.clone()]).eval(&r),
            Some(true)
        );
        assert_eq!(Rule::Or(vec![unknown.clone(), no.clone()]).eval(&r), None);
        assert_eq!(Rule::Not(Box::new(unknown.clone())).eval(&r), None);
        // NOT (owner = 'bob') on a NULL owner is NULL: not visible.
        let bob = Rule::Not(Box::new(is_in("gone", &["\"bob\""], false)));
        assert!(!bob.admits(Some(&r)));
        assert!(!owner.admits(None));
    }

    #[test]
    fn keys_are_values_a_row_must_hold_to_be_admitted() {
        let owner = is_in("owner", &["\"alice\""], false);
        let teams = is_in("team", &["3", "4"], true);
        let or = Rule::Or(vec![owner.clone(), teams.clone()]);
        let mut both = or.keys().unwrap();
        both.sort();
        assert_eq!(both, [("owner", "\"alice\""), ("team", "3"), ("team", "4")]);
        // AND: the shortest conjunct's list; a conjunct without one is no help.
        let and = Rule::And(vec![
            Rule::Not(Box::new(owner.clone())),
            teams,
            owner.clone(),
        ]);
        assert_eq!(and.keys().unwrap(), [("owner", "\"alice\"")]);
        assert_eq!(Rule::And(vec![]).keys(), None, "AND of nothing is true");
        assert_eq!(
            Rule::Or(vec![]).keys(),
            Some(vec![]),
            "OR of nothing is false"
        );
        assert_eq!(Rule::Or(vec![owner, Rule::Known(Some(true))]).keys(), None);
        assert_eq!(Rule::Known(None).keys(), Some(vec![]));
    }
}
