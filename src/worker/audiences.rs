//! Row security the network side cannot judge by value (policies with sub-selects, functions
//! of the row, ...), judged here for each batch of changes: one statement per batch for each
//! distinct table, role, claims and policy set (an audience), however many subscribers share
//! it, never one per change per subscriber.

use super::policy::set_claims;
use super::security::{as_owner, with_time_limit};
use crate::pg::xact::{in_subtransaction, in_transaction};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgBuiltInOids, PgOid};
use realtime_core::auth::Principal;
use realtime_core::bridge::Change;
use realtime_core::visibility::{AudienceId, Verdict};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Duration;

/// Longest the policies of one audience may take over one batch; past it the audience is
/// told it missed those changes (`policy_failed`), and everyone else is served.
const BATCH_TIME_LIMIT: Duration = Duration::from_millis(250);
/// Longest all audiences together may take over one batch, so that delivery to everyone
/// else never waits longer: audiences not judged by then are told they missed the batch.
/// Each batch starts with the audience after the last one judged, so none is always last.
const JUDGING_BUDGET: Duration = Duration::from_millis(250);
/// Prepared statements kept (one per table and policy set); past it they are made afresh.
const MAX_PLANS: usize = 256;

#[derive(PartialEq, Eq, Hash, Clone)]
struct Key {
    relid: u32,
    role: pg_sys::Oid,
    claims: String,
    condition: String,
}

struct Audience {
    key: Key,
    role_name: String,
    /// `schema.table`, quoted, for the row type.
    table: String,
    /// The table's own name, quoted: the policies refer to its columns by it.
    alias: String,
    members: usize,
}

#[derive(Default)]
pub struct Audiences {
    next: AudienceId,
    ids: HashMap<Key, AudienceId>,
    audiences: std::collections::BTreeMap<AudienceId, Audience>,
    /// The judging statement of each table and policy set, planned once (PostgreSQL plans it
    /// again itself when the role or the catalogs call for it).
    plans: HashMap<String, OwnedPreparedStatement>,
    /// Where the last batch's judging stopped.
    resume_after: AudienceId,
}

impl Audiences {
    /// A subscriber joins the audience of these table, role, claims and policies.
    pub fn join(
        &mut self,
        relid: u32,
        role: pg_sys::Oid,
        principal: &Principal,
        condition: String,
        table: String,
        alias: String,
    ) -> AudienceId {
        let key = Key {
            relid,
            role,
            claims: principal.claims.clone(),
            condition,
        };
        if let Some(id) = self.ids.get(&key) {
            if let Some(a) = self.audiences.get_mut(id) {
                a.members += 1;
            }
            return *id;
        }
        self.next += 1;
        let id = self.next;
        self.ids.insert(key.clone(), id);
        self.audiences.insert(
            id,
            Audience {
                key,
                role_name: principal.role.clone(),
                table,
                alias,
                members: 1,
            },
        );
        id
    }

    pub fn leave(&mut self, id: AudienceId) {
        if let Some(a) = self.audiences.get_mut(&id) {
            a.members -= 1;
            if a.members == 0 {
                let a = self.audiences.remove(&id).expect("present");
                self.ids.remove(&a.key);
            }
        }
    }

    /// Attach to each change the verdicts of the audiences of its table.
    pub fn judge(&mut self, changes: &mut [Change]) {
        if self.audiences.is_empty() {
            return;
        }
        if self.plans.len() > MAX_PLANS {
            self.plans.clear();
        }
        let started = std::time::Instant::now();
        let mut verdicts: Vec<Vec<(AudienceId, Verdict)>> = vec![Vec::new(); changes.len()];
        let mut judged = false;
        let order = self
            .audiences
            .range(self.resume_after + 1..)
            .chain(self.audiences.range(..=self.resume_after));
        for (id, audience) in order {
            let mine: Vec<usize> = (0..changes.len())
                .filter(|i| changes[*i].relid == audience.key.relid)
                .collect();
            if mine.is_empty() {
                continue;
            }
            judged = true;
            let visible = if started.elapsed() < JUDGING_BUDGET {
                self.resume_after = *id;
                audience.visible(changes, &mine, &mut self.plans)
            } else {
                None
            };
            for (n, i) in mine.into_iter().enumerate() {
                let verdict = match &visible {
                    Some(v) => Verdict {
                        new_visible: v[2 * n],
                        old_visible: v[2 * n + 1],
                        failed: false,
                    },
                    None => Verdict {
                        new_visible: false,
                        old_visible: false,
                        failed: true,
                    },
                };
                verdicts[i].push((*id, verdict));
            }
        }
        if judged {
            for (change, v) in changes.iter_mut().zip(verdicts) {
                change.set_verdicts(v);
            }
        }
    }
}

impl Audience {
    /// For each of the changes at `which`, whether its new and its old row pass the policies
    /// (two entries per change); `None` if the policies failed.
    fn visible(
        &self,
        changes: &[Change],
        which: &[usize],
        plans: &mut HashMap<String, OwnedPreparedStatement>,
    ) -> Option<Vec<bool>> {
        // Every image, new then old per change; an absent one is JSON null and never passes.
        let mut images = String::from("[");
        for (n, i) in which.iter().enumerate() {
            let c = &changes[*i];
            if n > 0 {
                images.push(',');
            }
            images.push_str(c.new.as_deref().unwrap_or("null"));
            images.push(',');
            images.push_str(c.old.as_deref().unwrap_or("null"));
        }
        images.push(']');
        let sql = format!(
            "SELECT coalesce(array_agg(\"realtime image\".n), '{{}}')
               FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS \"realtime image\"(j, n),
                    LATERAL jsonb_populate_record(NULL::{table}, \"realtime image\".j) AS {alias}
              WHERE jsonb_typeof(\"realtime image\".j) = 'object' AND ({condition})",
            table = self.table,
            alias = self.alias,
            condition = self.key.condition,
        );
        let mut run = || {
            with_time_limit(BATCH_TIME_LIMIT, || {
                in_subtransaction(std::panic::AssertUnwindSafe(|| {
                    as_owner(self.key.role, || {
                        set_claims(&self.key.claims);
                        Spi::connect(|client| {
                            let plan = match plans.entry(sql.clone()) {
                                Entry::Occupied(e) => e.into_mut(),
                                Entry::Vacant(e) => e.insert(
                                    client
                                        .prepare(
                                            sql.as_str(),
                                            &[PgOid::BuiltIn(PgBuiltInOids::TEXTOID)],
                                        )?
                                        .keep(),
                                ),
                            };
                            client
                                .select(&*plan, None, &[images.as_str().into()])?
                                .first()
                                .get_one::<Vec<i64>>()
                        })
                        .map_err(|e: pgrx::spi::Error| e.to_string())
                    })
                }))
                .and_then(|r| r)
            })
        };
        // SAFETY: a plain read of the transaction state on the worker's Postgres thread.
        let result = if unsafe { pg_sys::IsTransactionState() } {
            run()
        } else {
            in_transaction(std::panic::AssertUnwindSafe(run), |e| e)
        };
        match result {
            Ok(ordinals) => {
                let mut visible = vec![false; 2 * which.len()];
                // Ordinals count from 1.
                for n in ordinals.into_iter().flatten() {
                    if let Some(v) = (n as usize).checked_sub(1).and_then(|i| visible.get_mut(i)) {
                        *v = true;
                    }
                }
                Some(visible)
            }
            Err(e) => {
                warning!(
                    "realtime_ext: row security policies of {} failed for role \"{}\": {e}",
                    self.table,
                    self.role_name
                );
                None
            }
        }
    }
}
