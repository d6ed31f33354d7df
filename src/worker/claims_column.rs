//! One statement for every audience of a table and role: the claims as a column.
//!
//! A policy judged in batches (a sub-select, say) would be run once per batch for each
//! distinct claims. When the policy reads the claims only through direct
//! `current_setting('request.jwt.claims')` calls, those calls can read a column of a list of
//! audiences instead, and one statement judges every audience at once: the planner joins the
//! sub-select once per batch rather than running it once per audience.
//!
//! Anything that could read the claims out of sight refuses the rewrite: a user-defined
//! function or operator, a view, another table's row security, a volatile function (which
//! could set them), or a `current_setting` whose name is not a constant.

use pgrx::prelude::*;
use pgrx::FromDatum;
use std::ffi::c_void;

/// The column the rewritten condition reads the claims from, and its name alone.
pub const CLAIMS: &str = "\"realtime audience\".\"realtime claims\"";
pub const CLAIMS_NAME: &str = "\"realtime claims\"";

/// The claims calls as `pg_get_expr` writes them.
const CALLS: [&str; 3] = [
    "current_setting('request.jwt.claims'::text, true)",
    "current_setting('request.jwt.claims'::text, false)",
    "current_setting('request.jwt.claims'::text)",
];

/// `sql` (`pg_get_expr` of the policy tree `tree`) reading the claims from `CLAIMS`, if
/// the tree reads them in no other way.
pub fn rewrite(tree: &str, sql: &str) -> Option<String> {
    let tree = std::ffi::CString::new(tree).ok()?;
    let mut reads = Reads { claims: 0 };
    // SAFETY: a policy expression stored by PostgreSQL, read back and walked on the worker's
    // Postgres thread inside a transaction; catalog lookups only.
    let refused = unsafe {
        let node = pg_sys::stringToNode(tree.as_ptr()) as *mut pg_sys::Node;
        refuses(node, &mut reads as *mut Reads as *mut c_void)
    };
    if refused {
        return None;
    }
    // Every call found in the text must be one of the tree's, not a string constant that
    // looks like one.
    let written = sql.matches("current_setting('request.jwt.claims'").count();
    let mut rewritten = sql.to_string();
    let mut replaced = 0;
    for call in CALLS {
        replaced += rewritten.matches(call).count();
        rewritten = rewritten.replace(call, CLAIMS);
    }
    (written == reads.claims && replaced == reads.claims).then_some(rewritten)
}

struct Reads {
    /// `current_setting('request.jwt.claims')` calls found.
    claims: usize,
}

/// A function a policy may not call without reading anything out of sight (for
/// `check_functions_in_node`).
pub unsafe extern "C-unwind" fn user_or_volatile(funcid: pg_sys::Oid, _: *mut c_void) -> bool {
    // SAFETY: a catalog lookup, called by check_functions_in_node on the same thread.
    u32::from(funcid) >= pg_sys::FirstNormalObjectId
        || unsafe { pg_sys::func_volatile(funcid) } == pg_sys::PROVOLATILE_VOLATILE as i8
}

/// Whether `node` may read the claims other than by a counted call (the walker's "stop").
unsafe extern "C-unwind" fn refuses(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    use pg_sys::NodeTag::*;
    if node.is_null() {
        return false;
    }
    // SAFETY: `node` is part of the tree being walked; `context` is `rewrite`'s `Reads`.
    unsafe {
        match (*node).type_ {
            T_Query => {
                return pg_sys::query_tree_walker(
                    node as *mut pg_sys::Query,
                    Some(refuses),
                    context,
                    pg_sys::QTW_EXAMINE_RTES_BEFORE as i32,
                )
            }
            // The range table walker goes on into the entry's contents itself.
            T_RangeTblEntry => {
                let rte = node as *mut pg_sys::RangeTblEntry;
                return (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION
                    && !plain_table((*rte).relid);
            }
            T_FuncExpr => {
                let call = node as *mut pg_sys::FuncExpr;
                let id = u32::from((*call).funcid);
                if id == pg_sys::F_CURRENT_SETTING_TEXT || id == pg_sys::F_CURRENT_SETTING_TEXT_BOOL
                {
                    match setting_name(call) {
                        Some(name) if name == "request.jwt.claims" => {
                            (*(context as *mut Reads)).claims += 1
                        }
                        Some(name) if !name.starts_with("request.jwt") => {}
                        _ => return true,
                    }
                }
            }
            _ => {}
        }
        pg_sys::check_functions_in_node(node, Some(user_or_volatile), std::ptr::null_mut())
            || pg_sys::expression_tree_walker(node, Some(refuses), context)
    }
}

/// The setting a `current_setting` call reads, when it is a constant.
unsafe fn setting_name(call: *mut pg_sys::FuncExpr) -> Option<String> {
    let args = pgrx::PgList::<pg_sys::Node>::from_pg((*call).args);
    let first = args.head()?;
    if (*first).type_ != pg_sys::NodeTag::T_Const {
        return None;
    }
    let constant = first as *mut pg_sys::Const;
    if (*constant).consttype != pg_sys::TEXTOID {
        return None;
    }
    String::from_datum((*constant).constvalue, (*constant).constisnull)
}

/// A table (or materialized view) whose rows do not depend on who reads them: no row
/// security of its own. Views could call anything.
unsafe fn plain_table(relid: pg_sys::Oid) -> bool {
    let kind = pg_sys::get_rel_relkind(relid) as u8;
    if ![
        pg_sys::RELKIND_RELATION,
        pg_sys::RELKIND_PARTITIONED_TABLE,
        pg_sys::RELKIND_MATVIEW,
    ]
    .contains(&kind)
    {
        return false;
    }
    let rel = pg_sys::RelationIdGetRelation(relid);
    if rel.is_null() {
        return false;
    }
    let secured = (*(*rel).rd_rel).relrowsecurity;
    pg_sys::RelationClose(rel);
    !secured
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// `rewrite` of a policy with condition `condition` on a fresh table.
    fn rewritten(condition: &str) -> Option<String> {
        Spi::run("DROP TABLE IF EXISTS cc_t").unwrap();
        Spi::run("CREATE TABLE cc_t (id int, team int)").unwrap();
        Spi::run(&format!("CREATE POLICY p ON cc_t USING ({condition})")).unwrap();
        let (tree, sql) = Spi::get_two::<String, String>(
            "SELECT polqual::text, pg_get_expr(polqual, polrelid) FROM pg_policy
              WHERE polrelid = 'cc_t'::regclass",
        )
        .unwrap();
        super::rewrite(&tree.unwrap(), &sql.unwrap())
    }

    #[pg_test]
    fn only_policies_that_read_the_claims_directly_are_rewritten() {
        Spi::run(
            "CREATE TABLE cc_members (team int, member text);
             CREATE VIEW cc_view AS SELECT * FROM cc_members;
             CREATE TABLE cc_secured (team int, member text);
             ALTER TABLE cc_secured ENABLE ROW LEVEL SECURITY;
             CREATE FUNCTION cc_uid() RETURNS text LANGUAGE sql STABLE
                 AS $$ SELECT current_setting('request.jwt.claims', true)::json->>'sub' $$;",
        )
        .unwrap();
        let direct = rewritten(
            "EXISTS (SELECT 1 FROM cc_members m WHERE m.team = cc_t.team
                AND m.member = current_setting('request.jwt.claims', true)::json->>'sub')",
        )
        .expect("a direct read is rewritten");
        assert!(
            direct.contains(super::CLAIMS) && !direct.contains("current_setting"),
            "{direct}"
        );
        // A string that looks like the call stays a string.
        let literal =
            rewritten("'current_setting(''request.jwt.claims''::text, true)' <> current_setting('request.jwt.claims')")
                .expect("rewritten");
        assert!(
            literal.starts_with("('current_setting(''request.jwt.claims''::text, true)'::text <> \"realtime audience\""),
            "{literal}"
        );
        assert!(rewritten("(SELECT count(*) FROM cc_members) > 0").is_some());
        for refused in [
            // The claims could be read out of sight.
            "EXISTS (SELECT 1 FROM cc_members m WHERE m.member = cc_uid())",
            "EXISTS (SELECT 1 FROM cc_view m WHERE m.member = 'x')",
            "EXISTS (SELECT 1 FROM cc_secured m WHERE m.member = 'x')",
            "current_setting('request.jwt.claim.sub', true) = 'x'",
            "current_setting('request.jwt.' || 'claims', true) IS NOT NULL",
            // Volatile: could set them, and runs a different number of times.
            "random() < 2",
        ] {
            assert_eq!(rewritten(refused), None, "{refused}");
        }
    }
}
