//! The SQL functions users call: realtime_watch(), realtime_unwatch(). realtime_watched() and
//! the realtime.watched view are plain SQL (sql/watched.sql). The triggers themselves are the
//! only record of what is watched, so a restart, pg_dump/pg_restore or DROP TABLE can never
//! leave a stale list behind.

use crate::error::raise;
use crate::event::Op;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::PgSqlErrorCode::*;
use realtime_core::change::EndReason;
use realtime_core::ops::OpSet;

/// Partitioned tables: one row trigger, cloned by PostgreSQL onto every partition.
const ROW_TRIGGER: &str = "realtime_ext_capture_row";
/// Ordinary tables: a statement trigger per operation (transition tables allow one each).
const STATEMENT_TRIGGERS: [(Op, &str, &str); 3] = [
    (
        Op::Insert,
        "realtime_ext_capture_insert",
        "REFERENCING NEW TABLE AS realtime_new",
    ),
    (
        Op::Update,
        "realtime_ext_capture_update",
        "REFERENCING OLD TABLE AS realtime_old NEW TABLE AS realtime_new",
    ),
    (
        Op::Delete,
        "realtime_ext_capture_delete",
        "REFERENCING OLD TABLE AS realtime_old",
    ),
];
const TRUNCATE_TRIGGER: &str = "realtime_ext_capture_truncate";

extension_sql_file!(
    "../sql/watched.sql",
    name = "watched",
    requires = [realtime_watch, depend_on_extension, table_dropped]
);

/// Start streaming changes of `tbl`. Idempotent; calling again with other events updates them.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime_watch(tbl regclass, events text[] DEFAULT ARRAY['INSERT','UPDATE','DELETE','TRUNCATE'])
RETURNS void STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION realtime_watch(regclass, text[]) IS 'Stream committed changes of a table to realtime WebSocket clients';
"#)]
fn realtime_watch(tbl: pg_sys::Oid, events: Vec<String>) {
    check_database();
    let rel = check_watchable(tbl);
    let ops = parse_events(&events);
    let row_ops: Vec<&str> = ops
        .iter()
        .filter(|op| *op != Op::Truncate)
        .map(Op::name)
        .collect();
    drop_triggers(tbl, &rel);
    let partitioned = Spi::get_one_with_args::<bool>(
        "SELECT relkind = 'p' OR relispartition FROM pg_class WHERE oid = $1",
        &[tbl.into()],
    )
    .unwrap_or_else(|e| spi_failed(e))
    .unwrap_or(false);
    if partitioned && !row_ops.is_empty() {
        let sql = format!(
            "CREATE TRIGGER {ROW_TRIGGER} AFTER {} ON {rel} FOR EACH ROW EXECUTE FUNCTION realtime.capture_row()",
            row_ops.join(" OR ")
        );
        Spi::run(&sql).unwrap_or_else(|e| spi_failed(e));
    }
    for (op, name, referencing) in STATEMENT_TRIGGERS {
        if !partitioned && ops.contains(op) {
            let sql = format!(
                "CREATE TRIGGER {name} AFTER {} ON {rel} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION realtime.capture_rows()",
                op.name()
            );
            Spi::run(&sql).unwrap_or_else(|e| spi_failed(e));
        }
    }
    if ops.contains(Op::Truncate) {
        let sql = format!(
            "CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {rel} FOR EACH STATEMENT EXECUTE FUNCTION realtime.capture_truncate()"
        );
        Spi::run(&sql).unwrap_or_else(|e| spi_failed(e));
    }
    adopt(tbl);
}

/// Stop streaming changes of `tbl`. Idempotent.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime_unwatch(tbl regclass)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION realtime_unwatch(regclass) IS 'Stop streaming changes of a table';
"#)]
fn realtime_unwatch(tbl: pg_sys::Oid) {
    let rel = check_watchable(tbl);
    if drop_triggers(tbl, &rel) {
        crate::capture::end_subscriptions(tbl, EndReason::Unwatched);
    }
}

/// Called by the sql_drop event trigger for every dropped table: its subscriptions end when
/// the DROP commits. Not callable by other roles (sql/watched.sql revokes it).
#[pg_extern(sql = r#"
CREATE FUNCTION realtime.table_dropped(tbl oid)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn table_dropped(tbl: pg_sys::Oid) {
    crate::capture::end_subscriptions(tbl, EndReason::Dropped);
}

fn spi_failed(e: pgrx::spi::Error) -> ! {
    raise(
        ERRCODE_INTERNAL_ERROR,
        format!("realtime_ext: {e}"),
        "This is a bug in realtime_ext; please report it.",
    )
}

fn check_database() {
    let configured = crate::gucs::database();
    let current = Spi::get_one::<String>("SELECT current_database()::text")
        .ok()
        .flatten()
        .unwrap_or_default();
    if current != configured {
        raise(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("realtime_ext serves database \"{configured}\", not \"{current}\""),
            format!(
                "Set realtime.database = '{current}' in postgresql.conf and restart the server, \
                 or watch tables in database \"{configured}\"."
            ),
        );
    }
}

/// Checks kind, persistence and ownership; returns the table's name as SQL text.
fn check_watchable(tbl: pg_sys::Oid) -> String {
    let row = Spi::get_three_with_args::<String, String, bool>(
        "SELECT c.relkind::text, c.relpersistence::text,
                (c.oid < 16384 OR n.nspname IN ('pg_catalog', 'information_schema', 'pg_toast'))
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[tbl.into()],
    )
    .unwrap_or_else(|e| spi_failed(e));
    let (Some(kind), Some(persistence), Some(system)) = row else {
        raise(
            ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", tbl.to_u32()),
            "Check the table name.",
        );
    };
    let rel = Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[tbl.into()])
        .ok()
        .flatten()
        .unwrap_or_default();
    if system {
        raise(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("\"{rel}\" is a system catalog"),
            "Only user tables can be watched.",
        );
    }
    let what = match kind.as_str() {
        "r" | "p" => None,
        "v" => Some("a view"),
        "m" => Some("a materialized view"),
        "f" => Some("a foreign table"),
        "S" => Some("a sequence"),
        "i" | "I" => Some("an index"),
        _ => Some("not a table"),
    };
    if let Some(what) = what {
        raise(
            ERRCODE_WRONG_OBJECT_TYPE,
            format!("\"{rel}\" is {what}"),
            "realtime_watch() accepts ordinary and partitioned tables; watch the tables a view reads instead.",
        );
    }
    if persistence == "t" {
        raise(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("\"{rel}\" is a temporary table"),
            "Temporary tables are private to one session; watch a permanent or unlogged table.",
        );
    }
    let inherits = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_inherits i
                          JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
                         WHERE $1 IN (i.inhrelid, i.inhparent) AND NOT c.relispartition)",
        &[tbl.into()],
    )
    .unwrap_or_else(|e| spi_failed(e));
    if inherits == Some(true) {
        raise(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("\"{rel}\" is part of an inheritance tree"),
            "Rows changed through a parent or a child would be reported under the wrong table or \
             not at all; use declarative partitioning, whose partitions are reported under the \
             partitioned table.",
        );
    }
    let owner = Spi::get_one_with_args::<bool>(
        "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = $1",
        &[tbl.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !owner {
        raise(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {rel}"),
            "Ask the table's owner or a superuser to run realtime_watch().",
        );
    }
    rel
}

fn parse_events(events: &[String]) -> OpSet {
    if events.is_empty() {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "events must not be empty",
            "Use any of INSERT, UPDATE, DELETE, TRUNCATE.",
        );
    }
    OpSet::parse(events).unwrap_or_else(|name| {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown event \"{name}\""),
            "Use any of INSERT, UPDATE, DELETE, TRUNCATE.",
        )
    })
}

/// Drops whichever of the capture triggers exist; returns whether there were any.
fn drop_triggers(tbl: pg_sys::Oid, rel: &str) -> bool {
    let names: Vec<String> = Spi::connect(|client| {
        client
            .select(
                "SELECT tgname::text FROM realtime.capture_triggers WHERE tgrelid = $1",
                None,
                &[tbl.into()],
            )?
            .map(|row| row.get::<String>(1))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().flatten().collect())
    })
    .unwrap_or_else(|e| spi_failed(e));
    for name in &names {
        Spi::run(&format!("DROP TRIGGER {} ON {rel}", quote_identifier(name)))
            .unwrap_or_else(|e| spi_failed(e));
    }
    !names.is_empty()
}

/// Make the triggers part of the extension's footprint: DROP EXTENSION removes them without
/// CASCADE instead of failing on them. Also run by an event trigger after every CREATE TRIGGER,
/// so that triggers recreated by pg_restore are adopted too.
#[pg_extern(sql = r#"
CREATE FUNCTION realtime.depend_on_extension(tbl regclass)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn depend_on_extension(tbl: pg_sys::Oid) {
    adopt(tbl)
}

fn adopt(tbl: pg_sys::Oid) {
    let Some(ext) = crate::pg::extension_oid(c"realtime_ext") else {
        return;
    };
    let trigger_oids: Vec<pg_sys::Oid> = Spi::connect(|client| {
        client
            .select(
                "SELECT t.oid FROM realtime.capture_triggers t
                  WHERE t.tgrelid = $1
                    AND NOT EXISTS (SELECT FROM pg_depend d
                                     WHERE d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                                       AND d.refclassid = 'pg_extension'::regclass)",
                None,
                &[tbl.into()],
            )?
            .map(|row| row.get::<pg_sys::Oid>(1))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().flatten().collect())
    })
    .unwrap_or_else(|e| spi_failed(e));
    for oid in trigger_oids {
        crate::pg::depend_on_extension(oid, ext);
    }
}
