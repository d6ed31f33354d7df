//! The judge: a background worker that judges the audiences whose policies were too slow for
//! the worker, or failed there (`audiences`), so that they never hold up its loop. The network
//! side has the worker start it when a session first needs it (`realtime_core::net::apart`);
//! it connects to the judge socket and answers jobs, one at a time, each in a transaction of
//! its own as the audience's subscriber (`as_subscriber`), within `JOB_TIME_LIMIT`, until the
//! socket closes or it is told to stop.

use super::audiences::{run, As, Images};
use crate::gucs;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use realtime_core::net::apart::{Answer, Job, JOB_TIME_LIMIT, SOCKET};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Largest job read (the row images of the changes waiting for one audience).
const MAX_JOB: u32 = 256 << 20;
/// How often a judge waiting for work looks at its interrupts (SIGTERM ends it).
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// A policy that keeps failing is logged once per this interval, with how often it failed.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Start the judge; it connects to the judge socket on its own.
pub fn launch() -> Result<(), String> {
    crate::pg::launch_worker(
        "realtime_ext judge",
        "realtime_ext judge",
        "realtime_judge_main",
        0,
    )
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn realtime_judge_main(_arg: pg_sys::Datum) {
    // PostgreSQL's own handlers: SIGTERM ends the judge, pg_cancel_backend() cancels a job.
    // SAFETY: at the start of a background worker, as bgworker.c expects.
    unsafe { pg_sys::BackgroundWorkerUnblockSignals() };
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    crate::pg::pin_session(c"realtime_ext judge");
    let mut socket = match UnixStream::connect(SOCKET) {
        Ok(s) => s,
        Err(e) => {
            warning!("realtime_ext: the judge could not connect to {SOCKET}: {e}");
            return;
        }
    };
    if socket.set_read_timeout(Some(IDLE_CHECK)).is_err() {
        return;
    }
    let mut plans = HashMap::new();
    let mut logged = HashMap::new();
    while let Some(job) = read_job(&mut socket) {
        let answer = match job {
            Ok(job) => {
                let answer = judge(&job, &mut plans);
                if let Answer::Failed(why) = &answer {
                    log_failure(&mut logged, &job.spec.name, why);
                }
                answer
            }
            Err(why) => Answer::Failed(why),
        };
        let answer = serde_json::to_vec(&answer).expect("an answer serializes");
        let sent = socket
            .write_all(&(answer.len() as u32).to_le_bytes())
            .and_then(|()| socket.write_all(&answer));
        if sent.is_err() {
            break;
        }
    }
}

/// The next job; `None` once the socket is closed. Waiting for one, the judge answers its
/// interrupts every `IDLE_CHECK`.
fn read_job(socket: &mut UnixStream) -> Option<Result<Job, String>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match socket.read(&mut len[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) && got == 0 =>
            {
                pg_sys::check_for_interrupts!();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_JOB {
        return None;
    }
    let mut job = vec![0; len as usize];
    // The rest of a job follows at once; a stall is a broken network side.
    socket.read_exact(&mut job).ok()?;
    Some(serde_json::from_slice(&job).map_err(|e| e.to_string()))
}

fn judge(job: &Job, plans: &mut HashMap<String, pgrx::spi::OwnedPreparedStatement>) -> Answer {
    let images = Images::of_rows(
        job.images
            .iter()
            .map(|[new, old]| [new.as_deref(), old.as_deref()]),
    );
    let role = pg_sys::Oid::from(job.spec.role);
    let claims = As::One(&job.spec.claims);
    let passed = run(
        role,
        claims,
        &job.spec.sql,
        &images.json,
        plans,
        JOB_TIME_LIMIT,
    );
    let visible = passed.map(|passed| images.tally(1, passed).pop().unwrap_or_default());
    match visible {
        Ok(visible) => Answer::Visible(visible.chunks(2).map(|v| [v[0], v[1]]).collect()),
        Err(why) => Answer::Failed(why),
    }
}

/// Count a failed policy, and warn of it at most once per `LOG_EVERY` for each audience's table and role.
fn log_failure(logged: &mut HashMap<String, (Option<Instant>, u64)>, name: &str, why: &str) {
    crate::stats::shared().increment(realtime_core::stats::Stat::PolicyFailures);
    let (last, failed) = logged.entry(name.to_string()).or_insert((None, 0));
    *failed += 1;
    if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
        warning!(
            "realtime_ext: row security policies of {name} failed ({failed} times since this was last logged): {why}"
        );
        *last = Some(Instant::now());
        *failed = 0;
    }
}
