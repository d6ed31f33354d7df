//! Row security the network side cannot judge by value (policies with sub-selects, functions
//! of the row, ...), judged here for each batch of changes: one statement per batch for each
//! distinct table, role, claims and policy set (an audience), however many subscribers share
//! it, never one per change per subscriber. Where the policies read the claims only as
//! `claims_column` can rewrite, one statement judges every audience of a table, role and
//! policy set together, with the claims as a column.
//!
//! Each audience has its own share of the worker's time per batch (`INLINE_TIME_LIMIT`). One
//! whose policies run past it, or fail, is judged apart from then on: its changes carry an
//! `apart` verdict, and its sessions have the judge (`apart`, a background worker of its own)
//! decide, so that a slow or broken policy costs nobody else a row or a millisecond.

use super::claims_column;
use super::policy::Policies;
use super::security::{as_subscriber, set_setting, with_time_limit};
use crate::pg::xact::{in_any_transaction, in_subtransaction};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgBuiltInOids, PgOid};
use realtime_core::auth::Principal;
use realtime_core::change::{AudienceId, Change, Topic, Verdict};
use realtime_core::net::shared::Shared;
use realtime_core::stats::{Stat, Timing};
use realtime_core::visibility::ApartSpec;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest the policies of one audience may take over one batch here; past it (or on an
/// error) the audience is judged apart from then on, this batch included.
const INLINE_TIME_LIMIT: Duration = Duration::from_millis(50);
/// Longest all audiences together may take over one batch, so that delivery to everyone
/// never waits longer: audiences not reached by then have this batch judged apart. Each batch
/// starts with the audience after the last one judged, so none is always last.
const JUDGING_BUDGET: Duration = Duration::from_millis(100);
/// Prepared statements kept (one per table and policy set); past it they are made afresh.
const MAX_PLANS: usize = 256;

#[derive(PartialEq, Eq, Hash, Clone)]
struct Key {
    relid: u32,
    role: pg_sys::Oid,
    claims: String,
    condition: String,
}

/// The policies a subscription is judged by, as SQL over the table's columns.
pub struct Condition {
    pub sql: String,
    /// The same reading the claims from `claims_column::CLAIMS`, when it can.
    pub over_claims: Option<String>,
}

struct Audience {
    key: Key,
    over_claims: Option<String>,
    role_name: String,
    /// `schema.table`, quoted, for the row type.
    table: String,
    /// The table's own name, quoted: the policies refer to its columns by it.
    alias: String,
    members: usize,
    /// Judged apart (by the judge), not here.
    apart: bool,
}

pub struct Audiences {
    /// Where the audiences judged apart are listed for the sessions.
    shared: Arc<Shared>,
    next: AudienceId,
    ids: HashMap<Key, AudienceId>,
    audiences: BTreeMap<AudienceId, Audience>,
    /// The judging statements, planned once each (PostgreSQL plans one again itself when the
    /// role or the catalogs call for it).
    plans: HashMap<String, OwnedPreparedStatement>,
    /// Where the last batch's judging one by one stopped.
    resume_after: AudienceId,
    /// A catalog change came since the policies were read.
    stale: bool,
}

/// Where this worker's audience ids start: past any an earlier worker gave out (the clock in
/// microseconds, times 1,024), so that an id held across a restart by an edge server
/// (`net::nats::answer`) names no other audience; it is judged as unknown, a failed verdict.
fn first_id() -> AudienceId {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    micros.saturating_mul(1024)
}

/// Which of a batch's row images pass, new then old per change (two entries per change).
type Visible = Vec<bool>;

impl Audiences {
    pub fn new(shared: Arc<Shared>) -> Audiences {
        Audiences {
            shared,
            next: first_id(),
            ids: HashMap::new(),
            audiences: BTreeMap::new(),
            plans: HashMap::new(),
            resume_after: 0,
            stale: false,
        }
    }

    /// A subscriber joins the audience of these table, role, claims and policies.
    pub fn join(
        &mut self,
        relid: u32,
        role: pg_sys::Oid,
        principal: &Principal,
        condition: Condition,
        table: String,
        alias: String,
    ) -> AudienceId {
        let key = Key {
            relid,
            role,
            claims: principal.claims.clone(),
            condition: condition.sql,
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
                over_claims: condition.over_claims,
                role_name: principal.role.clone(),
                table,
                alias,
                members: 1,
                apart: false,
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
                self.shared.set_apart(id, None);
            }
        }
    }

    /// The policies may have changed (a committed catalog change): every audience takes its
    /// policies as they are then before it is judged again, keeping its id, so that what is
    /// judged after this point is judged by the new rules while its sessions authorize again.
    /// A run of catalog changes costs one reading.
    pub fn policies_changed(&mut self) {
        self.stale = true;
    }

    fn refresh_if_stale(&mut self) {
        if !std::mem::take(&mut self.stale) {
            return;
        }
        let _ = in_any_transaction(std::panic::AssertUnwindSafe(|| {
            self.refresh();
            Ok(())
        }));
    }

    /// Read every audience's policies again. Policies that cannot be read any more (the
    /// table is gone) admit nothing.
    fn refresh(&mut self) {
        self.plans.clear();
        for (id, a) in self.audiences.iter_mut() {
            let loaded = in_subtransaction(|| {
                Policies::load(pg_sys::Oid::from(a.key.relid), a.key.role)
                    .map(|p| (p.condition(), p.condition_over_claims()))
            })
            .and_then(|r| r);
            let (sql, over_claims) = loaded.unwrap_or_else(|e| {
                debug1!(
                    "realtime_ext: policies of {} could not be read again: {e}",
                    a.table
                );
                ("false".to_string(), None)
            });
            if sql != a.key.condition {
                self.ids.remove(&a.key);
                a.key.condition = sql;
                self.ids.entry(a.key.clone()).or_insert(*id);
            }
            a.over_claims = over_claims;
            // New policies get a new chance here. (Its spec stays listed: changes published
            // before this point may still wait for the judge, by the rules they were under.)
            a.apart = false;
        }
    }

    /// Judge `id` apart from now on.
    fn set_apart(&mut self, id: AudienceId) {
        if let Some(a) = self.audiences.get_mut(&id) {
            if !a.apart {
                log!(
                    "realtime_ext: row security policies of {} for role \"{}\" failed or ran past {INLINE_TIME_LIMIT:?}; judged apart from now on, so that they hold up nobody else",
                    a.table,
                    a.role_name
                );
                a.apart = true;
                self.shared.set_apart(id, Some(a.spec()));
            }
        }
    }

    /// Attach to each change (of one table, read back from the history) the verdict of one
    /// audience; a failure, or an audience that no longer exists, is a failed verdict.
    pub fn judge_one(&mut self, id: AudienceId, changes: &mut [Change]) {
        self.refresh_if_stale();
        let which: Vec<usize> = (0..changes.len()).collect();
        let judged = match self.audiences.get(&id) {
            Some(a) if a.apart => None,
            Some(a) => Some(a.visible(changes, &which, &mut self.plans, INLINE_TIME_LIMIT)),
            None => Some(None),
        };
        let judged = match judged {
            Some(None) if self.audiences.contains_key(&id) => {
                self.set_apart(id);
                None
            }
            judged => judged,
        };
        for (n, change) in changes.iter_mut().enumerate() {
            let v = match &judged {
                None => Verdict::APART,
                Some(visible) => verdict(visible.as_ref(), n),
            };
            change.set_verdicts(vec![(id, v)]);
        }
    }

    /// Attach to each change the verdicts of the audiences of its table.
    pub fn judge(&mut self, changes: &mut [Change]) {
        if self.audiences.is_empty() {
            return;
        }
        self.refresh_if_stale();
        if self.plans.len() > MAX_PLANS {
            self.plans.clear();
        }
        let started = Instant::now();
        let of_table = |relid: u32| -> Vec<usize> {
            (0..changes.len())
                .filter(|i| changes[*i].topic == Topic::Table(relid))
                .collect()
        };
        // `None`: judged apart.
        let mut judged: HashMap<AudienceId, Option<Visible>> = HashMap::new();

        // Together first: one statement for each table, role and policy set.
        let mut groups: HashMap<(u32, pg_sys::Oid, &str), Vec<AudienceId>> = HashMap::new();
        for (id, a) in &self.audiences {
            if let (Some(sql), false) = (&a.over_claims, a.apart) {
                groups
                    .entry((a.key.relid, a.key.role, sql.as_str()))
                    .or_default()
                    .push(*id);
            }
        }
        for ((relid, _, _), ids) in groups {
            let mine = of_table(relid);
            if mine.is_empty() || started.elapsed() >= JUDGING_BUDGET {
                continue;
            }
            let members: Vec<&Audience> = ids.iter().map(|id| &self.audiences[id]).collect();
            // Failed: judged one by one below, so that one audience's claims cost nobody else.
            if let Some(visible) = visible_together(&members, changes, &mine, &mut self.plans) {
                judged.extend(ids.into_iter().zip(visible.into_iter().map(Some)));
            }
        }

        // Then one by one, from where the last batch stopped, so none is always last.
        let mut slow = Vec::new();
        let order = self
            .audiences
            .range(self.resume_after + 1..)
            .chain(self.audiences.range(..=self.resume_after));
        for (id, audience) in order {
            if judged.contains_key(id) {
                continue;
            }
            let mine = of_table(audience.key.relid);
            if mine.is_empty() {
                continue;
            }
            // Out of time for this batch: judged apart, this once.
            let visible = if audience.apart || started.elapsed() >= JUDGING_BUDGET {
                None
            } else {
                self.resume_after = *id;
                let visible = audience.visible(changes, &mine, &mut self.plans, INLINE_TIME_LIMIT);
                if visible.is_none() {
                    slow.push(*id);
                }
                visible
            };
            judged.insert(*id, visible);
        }
        for id in slow {
            self.set_apart(id);
        }
        self.shared
            .stats
            .observe(Timing::PolicyJudging, started.elapsed());

        if judged.is_empty() {
            return;
        }
        let mut verdicts: Vec<Vec<(AudienceId, Verdict)>> = vec![Vec::new(); changes.len()];
        for (id, visible) in judged {
            let relid = self.audiences[&id].key.relid;
            for (n, i) in of_table(relid).into_iter().enumerate() {
                let v = match &visible {
                    Some(visible) => verdict(Some(visible), n),
                    None => Verdict::APART,
                };
                verdicts[i].push((id, v));
            }
        }
        for (change, v) in changes.iter_mut().zip(verdicts) {
            change.set_verdicts(v);
        }
    }
}

/// The verdict on the `n`-th change judged, from what was visible (`None`: it failed).
fn verdict(visible: Option<&Visible>, n: usize) -> Verdict {
    match visible {
        Some(v) => Verdict {
            new_visible: v[2 * n],
            old_visible: v[2 * n + 1],
            failed: false,
            apart: false,
        },
        None => Verdict::FAILED,
    }
}

/// The FROM and WHERE of a judging statement: every image of `$1` (a JSON array of row
/// images) as a row of the table, under its own name, that passes `condition`. The
/// statement's own columns have names no unqualified column of a policy can mean.
fn judging(audience: &Audience, condition: &str) -> String {
    format!(
        "jsonb_array_elements($1::jsonb) WITH ORDINALITY AS \"realtime image\"(\"realtime json\", \"realtime n\"),
              LATERAL jsonb_populate_record(NULL::{table}, \"realtime image\".\"realtime json\") AS {alias}
        WHERE ({condition})",
        table = audience.table,
        alias = audience.alias,
    )
}

/// The row images of some changes, as the `$1` of a judging statement.
pub struct Images {
    /// The images that exist, new then old per change, as a JSON array of objects. (No
    /// placeholder for absent ones: a filter on the array would spoil the planner's estimate
    /// of its size.)
    pub json: String,
    /// For each image in `json`, its place in a `Visible`: 2n for the new image of the n-th
    /// change, 2n + 1 for the old.
    places: Vec<usize>,
    changes: usize,
}

impl Images {
    fn of(changes: &[Change], which: &[usize]) -> Images {
        Images::of_rows(
            which
                .iter()
                .map(|i| [changes[*i].new.as_deref(), changes[*i].old.as_deref()]),
        )
    }

    /// From each change's new and old image.
    pub fn of_rows<'a>(rows: impl Iterator<Item = [Option<&'a str>; 2]>) -> Images {
        let mut json = String::from("[");
        let mut places = Vec::new();
        let mut changes = 0;
        for (n, images) in rows.enumerate() {
            changes += 1;
            for (k, image) in images.into_iter().enumerate() {
                if let Some(image) = image {
                    if !places.is_empty() {
                        json.push(',');
                    }
                    json.push_str(image);
                    places.push(2 * n + k);
                }
            }
        }
        json.push(']');
        Images {
            json,
            places,
            changes,
        }
    }

    /// What `audiences` audiences may see, from a statement's (audience, image) ordinal pairs
    /// (both counting from 1).
    pub fn tally(&self, audiences: usize, passed: Vec<(i64, i64)>) -> Vec<Visible> {
        let mut visible = vec![vec![false; 2 * self.changes]; audiences];
        for (audience, image) in passed {
            let place = (image as usize)
                .checked_sub(1)
                .and_then(|i| self.places.get(i));
            let of = (audience as usize)
                .checked_sub(1)
                .and_then(|a| visible.get_mut(a));
            if let (Some(place), Some(v)) = (place, of) {
                v[*place] = true;
            }
        }
        visible
    }
}

/// What each of `members` (one table, role and policy set that reads the claims as a column)
/// may see of the changes at `which`, in one statement; `None` if it failed.
fn visible_together(
    members: &[&Audience],
    changes: &[Change],
    which: &[usize],
    plans: &mut HashMap<String, OwnedPreparedStatement>,
) -> Option<Vec<Visible>> {
    let first = members.first()?;
    let condition = first.over_claims.as_deref()?;
    let sql = format!(
        "SELECT \"realtime audience\".\"realtime i\", \"realtime image\".\"realtime n\"
           FROM unnest($2::text[]) WITH ORDINALITY AS \"realtime audience\"({claims}, \"realtime i\"),
                {judging}",
        claims = claims_column::CLAIMS_NAME,
        judging = judging(first, condition),
    );
    let claims: Vec<String> = members.iter().map(|a| a.key.claims.clone()).collect();
    let images = Images::of(changes, which);
    let passed = run(
        first.key.role,
        As::Together(&claims),
        &sql,
        &images.json,
        plans,
        JUDGING_BUDGET,
    )
        .map_err(|e| {
            debug1!(
                "realtime_ext: row security policies of {} failed for {} audiences of role \"{}\" judged together, judging each alone: {e}",
                first.table,
                members.len(),
                first.role_name
            )
        })
        .ok()?;
    Some(images.tally(members.len(), passed))
}

impl Audience {
    /// What this audience may see of the changes at `which`; `None` if its policies failed.
    fn visible(
        &self,
        changes: &[Change],
        which: &[usize],
        plans: &mut HashMap<String, OwnedPreparedStatement>,
        limit: Duration,
    ) -> Option<Visible> {
        let images = Images::of(changes, which);
        let claims = As::One(&self.key.claims);
        let passed = run(self.key.role, claims, &self.statement(), &images.json, plans, limit)
            .map_err(|e| {
                crate::stats::shared().increment(Stat::PolicyFailures);
                debug1!(
                    "realtime_ext: row security policies of {} for role \"{}\" failed or ran past {limit:?}: {e}",
                    self.table,
                    self.role_name
                )
            })
            .ok()?;
        images.tally(1, passed).pop()
    }

    /// The statement that judges this audience alone: `$1` the images, the ordinals passing.
    fn statement(&self) -> String {
        format!(
            "SELECT 1::bigint, \"realtime image\".\"realtime n\" FROM {}",
            judging(self, &self.key.condition)
        )
    }

    /// How the judge judges it apart.
    fn spec(&self) -> ApartSpec {
        ApartSpec {
            name: format!("{} for role \"{}\"", self.table, self.role_name),
            role: u32::from(self.key.role),
            claims: self.key.claims.clone(),
            sql: self.statement(),
        }
    }
}

/// Whose claims a judging statement runs with.
pub enum As<'a> {
    /// One audience's, set as `request.jwt.claims`.
    One(&'a str),
    /// Each audience's, as the `$2` array the condition reads them from.
    Together(&'a [String]),
}

/// Run a judging statement over `images` as `role`, in a subtransaction and within `limit`:
/// its (audience, image) ordinal pairs.
pub fn run(
    role: pg_sys::Oid,
    claims: As,
    sql: &str,
    images: &str,
    plans: &mut HashMap<String, OwnedPreparedStatement>,
    limit: Duration,
) -> Result<Vec<(i64, i64)>, String> {
    let run = || {
        with_time_limit(limit, || {
            in_subtransaction(std::panic::AssertUnwindSafe(|| {
                let one = match claims {
                    As::One(claims) => Some(claims),
                    As::Together(_) => None,
                };
                as_subscriber(role, one, || {
                    // Made here: datums need the transaction.
                    let mut types = vec![PgOid::BuiltIn(PgBuiltInOids::TEXTOID)];
                    let mut args = vec![images.into()];
                    match claims {
                        As::One(_) => {}
                        As::Together(claims) => {
                            types.push(PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID));
                            args.push(claims.to_vec().into());
                            // Planned for each batch with its values: the planner then knows
                            // how many audiences there are, and hashes them once instead of
                            // going through all of them for every row.
                            set_setting(c"plan_cache_mode", c"force_custom_plan");
                        }
                    }
                    Spi::connect(|client| {
                        let plan = match plans.entry(sql.to_string()) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(e) => e.insert(client.prepare(sql, &types)?.keep()),
                        };
                        client
                            .select(&*plan, None, &args)?
                            .map(|row| Ok((row.get::<i64>(1)?, row.get::<i64>(2)?)))
                            .filter_map(|pair| match pair {
                                Ok((Some(a), Some(n))) => Some(Ok((a, n))),
                                Ok(_) => None,
                                Err(e) => Some(Err(e)),
                            })
                            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
                    })
                    .map_err(|e: pgrx::spi::Error| e.to_string())
                })
            }))
            .and_then(|r| r)
        })
    };
    in_any_transaction(std::panic::AssertUnwindSafe(run))
}
