//! Row-level security for a subscriber, worked out as PostgreSQL's own SELECT would apply it:
//! the table's SELECT and ALL policies for the role, permissive ones OR'ed, restrictive ones
//! AND'ed.
//!
//! A policy made of comparisons of a column with an expression of the claims alone (`owner =
//! auth.uid()`, `team_id = ANY(...claims...)`, boolean combinations, `true`) compiles to a
//! `Rule`: the claim side is evaluated here once, as the subscriber, and the network side then
//! judges rows by value. Any other policy is judged here for each batch of changes
//! (`audiences`), so the combined condition is kept as SQL text.

use super::claims_column::{self, user_or_volatile};
use super::security::as_subscriber;
use crate::pg::xact::in_subtransaction;
use pgrx::prelude::*;
use pgrx::PgList;
use realtime_core::auth::Principal;
use realtime_core::visibility::Rule;
use std::collections::HashSet;
use std::ffi::{c_void, CStr};

/// A policy condition with its claim side still to be evaluated.
#[derive(Debug)]
enum Template {
    And(Vec<Template>),
    Or(Vec<Template>),
    Not(Box<Template>),
    /// A boolean expression of the claims alone, as SQL.
    Claim(String),
    /// `column = <sql>`, or `column = ANY(<sql>)` when `array`.
    In {
        column: String,
        sql: String,
        array: bool,
    },
}

/// The SELECT policies that apply to one role on one table.
pub struct Policies {
    /// Each policy's condition as SQL (`pg_get_expr`), and whether it is permissive.
    conditions: Vec<(bool, String)>,
    /// The same with the claims read from a column (`claims_column`), when they can be.
    over_claims: Option<Vec<(bool, String)>>,
    /// The same, compiled, when every one of them could be.
    templates: Option<Vec<(bool, Template)>>,
}

impl Policies {
    /// The policies of `relid` that apply to `role`, compiled where possible. Compiling
    /// inlines SQL functions and may run immutable ones: as `role`, security-restricted.
    pub fn load(relid: pg_sys::Oid, role: pg_sys::Oid) -> Result<Policies, String> {
        let rows: Vec<(bool, String, String)> = Spi::connect(|client| {
            client
                .select(
                    "SELECT p.polpermissive, p.polqual::text, pg_get_expr(p.polqual, p.polrelid)
                       FROM pg_policy p
                      WHERE p.polrelid = $1 AND p.polcmd IN ('r', '*') AND p.polqual IS NOT NULL
                        AND (0::oid = ANY (p.polroles)
                             OR EXISTS (SELECT FROM unnest(p.polroles) r
                                         WHERE r <> 0 AND pg_has_role($2, r, 'USAGE')))
                      ORDER BY p.polname",
                    None,
                    &[relid.into(), role.into()],
                )?
                .map(|row| {
                    Ok((
                        row.get::<bool>(1)?.unwrap_or(true),
                        row.get::<String>(2)?.unwrap_or_default(),
                        row.get::<String>(3)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<_, pgrx::spi::Error>>()
        })
        .map_err(|e: pgrx::spi::Error| e.to_string())?;
        let templates = rows
            .iter()
            .map(|(permissive, tree, _)| {
                let template =
                    in_subtransaction(|| as_subscriber(role, None, || compile_tree(tree, relid)))
                        .ok()
                        .flatten()?;
                Some((*permissive, template))
            })
            .collect();
        let over_claims = rows
            .iter()
            .map(|(permissive, tree, sql)| Some((*permissive, claims_column::rewrite(tree, sql)?)))
            .collect();
        Ok(Policies {
            conditions: rows.into_iter().map(|(p, _, sql)| (p, sql)).collect(),
            over_claims,
            templates,
        })
    }

    /// The policies as one rule for `principal`: its claim sides evaluated as it would be,
    /// `None` if they did not all compile.
    pub fn rule(&self, role: pg_sys::Oid, principal: &Principal) -> Result<Option<Rule>, String> {
        let Some(templates) = &self.templates else {
            return Ok(None);
        };
        let (permissive, restrictive): (Vec<_>, Vec<_>) = templates.iter().partition(|(p, _)| *p);
        in_subtransaction(|| {
            as_subscriber(role, Some(&principal.claims), || {
                // No permissive policy: no row is visible (PostgreSQL's default deny).
                let mut all = vec![Rule::Or(
                    permissive
                        .iter()
                        .map(|(_, t)| evaluate(t))
                        .collect::<Result<_, _>>()?,
                )];
                for (_, t) in restrictive {
                    all.push(evaluate(t)?);
                }
                Ok(Some(Rule::And(all)))
            })
        })
        .and_then(|r| r)
    }

    /// The combined condition as SQL over the table's columns, for judging in batches.
    pub fn condition(&self) -> String {
        combine(&self.conditions)
    }

    /// The same reading the claims from `claims_column::CLAIMS`, if it can.
    pub fn condition_over_claims(&self) -> Option<String> {
        self.over_claims.as_deref().map(combine)
    }
}

/// Permissive conditions OR'ed, restrictive ones AND'ed, as PostgreSQL combines policies.
fn combine(conditions: &[(bool, String)]) -> String {
    let permissive: Vec<_> = conditions
        .iter()
        .filter(|(p, _)| *p)
        .map(|(_, sql)| format!("({sql})"))
        .collect();
    let mut all = vec![if permissive.is_empty() {
        "false".to_string()
    } else {
        format!("({})", permissive.join(" OR "))
    }];
    all.extend(
        conditions
            .iter()
            .filter(|(p, _)| !*p)
            .map(|(_, sql)| format!("({sql})")),
    );
    all.join(" AND ")
}

/// Evaluate a template's claim sides, as the role and claims in force.
fn evaluate(template: &Template) -> Result<Rule, String> {
    let all = |ts: &[Template]| ts.iter().map(evaluate).collect::<Result<Vec<_>, _>>();
    Ok(match template {
        Template::And(ts) => Rule::And(all(ts)?),
        Template::Or(ts) => Rule::Or(all(ts)?),
        Template::Not(t) => Rule::Not(Box::new(evaluate(t)?)),
        Template::Claim(sql) => Rule::Known(
            Spi::get_one::<bool>(&format!("SELECT ({sql})::bool")).map_err(|e| e.to_string())?,
        ),
        Template::In { column, sql, array } => {
            let canonical = |json: String| {
                serde_json::from_str::<serde_json::Value>(&json)
                    .map(|v| v.to_string())
                    .map_err(|e| e.to_string())
            };
            if *array {
                let (is_null, elements) = Spi::get_two::<bool, Vec<Option<String>>>(&format!(
                    "SELECT ({sql}) IS NULL,
                            ARRAY(SELECT to_json(e)::text FROM unnest({sql}) e)"
                ))
                .map_err(|e| e.to_string())?;
                if is_null != Some(false) {
                    Rule::In {
                        column: column.clone(),
                        values: None,
                        has_null: false,
                    }
                } else {
                    let elements = elements.unwrap_or_default();
                    Rule::In {
                        column: column.clone(),
                        has_null: elements.iter().any(Option::is_none),
                        values: Some(
                            elements
                                .into_iter()
                                .flatten()
                                .map(canonical)
                                .collect::<Result<HashSet<_>, _>>()?,
                        ),
                    }
                }
            } else {
                let value = Spi::get_one::<String>(&format!("SELECT to_json({sql})::text"))
                    .map_err(|e| e.to_string())?;
                Rule::In {
                    column: column.clone(),
                    values: value
                        .map(canonical)
                        .transpose()?
                        .map(|v| HashSet::from([v])),
                    has_null: false,
                }
            }
        }
    })
}

/// Compile a policy's stored expression tree, or `None` if it is not of a shape whose claim
/// side can be evaluated apart from the row.
fn compile_tree(tree: &str, relid: pg_sys::Oid) -> Option<Template> {
    let tree = std::ffi::CString::new(tree).ok()?;
    // SAFETY: on the worker's Postgres thread inside a transaction; the tree text comes from
    // pg_policy, and eval_const_expressions takes a NULL planner root (as expression_planner
    // does).
    unsafe {
        let node = pg_sys::stringToNode(tree.as_ptr()) as *mut pg_sys::Node;
        let node = pg_sys::eval_const_expressions(std::ptr::null_mut(), node);
        compile(node, relid)
    }
}

/// SAFETY (for the functions below): `node` is a valid expression tree, walked on the worker's
/// Postgres thread inside a transaction.
unsafe fn compile(node: *mut pg_sys::Node, relid: pg_sys::Oid) -> Option<Template> {
    if node.is_null() {
        return None;
    }
    if is_a(node, pg_sys::NodeTag::T_BoolExpr) {
        let b = node as *mut pg_sys::BoolExpr;
        let args = PgList::<pg_sys::Node>::from_pg((*b).args);
        let parts = args
            .iter_ptr()
            .map(|a| compile(a, relid))
            .collect::<Option<Vec<_>>>()?;
        return match (*b).boolop {
            pg_sys::BoolExprType::AND_EXPR => Some(Template::And(parts)),
            pg_sys::BoolExprType::OR_EXPR => Some(Template::Or(parts)),
            _ => Some(Template::Not(Box::new(parts.into_iter().next()?))),
        };
    }
    if claims_only(node) {
        return Some(Template::Claim(deparse(node, relid)?));
    }
    if let Some(column) = column_of(node, relid) {
        // A boolean column by itself: `column = true`.
        return (pg_sys::exprType(node) == pg_sys::BOOLOID).then(|| Template::In {
            column,
            sql: "true".into(),
            array: false,
        });
    }
    let (opno, collation, args, array) = if is_a(node, pg_sys::NodeTag::T_OpExpr) {
        let op = node as *mut pg_sys::OpExpr;
        ((*op).opno, (*op).inputcollid, (*op).args, false)
    } else if is_a(node, pg_sys::NodeTag::T_ScalarArrayOpExpr) {
        let op = node as *mut pg_sys::ScalarArrayOpExpr;
        if !(*op).useOr {
            return None;
        }
        ((*op).opno, (*op).inputcollid, (*op).args, true)
    } else {
        return None;
    };
    let args = PgList::<pg_sys::Node>::from_pg(args);
    let (Some(left), Some(right), 2) = (args.get_ptr(0), args.get_ptr(1), args.len()) else {
        return None;
    };
    if !equality_as_json(opno, collation) {
        return None;
    }
    // `column = claims` (either way round for `=`; ANY takes the array on the right).
    let (column, claim) = match column_of(left, relid) {
        Some(c) => (c, right),
        None if !array => (column_of(right, relid)?, left),
        None => return None,
    };
    if !claims_only(claim) {
        return None;
    }
    Some(Template::In {
        column,
        sql: deparse(claim, relid)?,
        array,
    })
}

unsafe fn is_a(node: *mut pg_sys::Node, tag: pg_sys::NodeTag) -> bool {
    (*node).type_ == tag
}

/// The column `node` reads, if it is a column of the policy's table (possibly relabelled,
/// as varchar is to text), of a type whose JSON text compares as its values do.
unsafe fn column_of(mut node: *mut pg_sys::Node, relid: pg_sys::Oid) -> Option<String> {
    while is_a(node, pg_sys::NodeTag::T_RelabelType) {
        node = (*(node as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
    }
    if !is_a(node, pg_sys::NodeTag::T_Var) {
        return None;
    }
    let var = node as *mut pg_sys::Var;
    if (*var).varlevelsup != 0 || (*var).varattno <= 0 {
        return None;
    }
    let base = pg_sys::getBaseType((*var).vartype);
    if !JSON_EXACT.contains(&base) && base != pg_sys::VARCHAROID {
        return None;
    }
    let name = pg_sys::get_attname(relid, (*var).varattno, true);
    (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
}

/// Types whose values are equal exactly when their JSON texts are (no numeric `1.0 = 1`, no
/// blank-padded or case-folding text).
const JSON_EXACT: [pg_sys::Oid; 7] = [
    pg_sys::INT2OID,
    pg_sys::INT4OID,
    pg_sys::INT8OID,
    pg_sys::TEXTOID,
    pg_sys::UUIDOID,
    pg_sys::BOOLOID,
    pg_sys::OIDOID,
];
const INTEGER_BTREE_FAMILY: u32 = 1976;
const BT_EQUAL_STRATEGY: i32 = 3;

/// Whether operator `opno` is an equality that holds exactly when both sides' JSON texts are
/// the same: integer equality across int2/int4/int8, or the default equality of one of the
/// `JSON_EXACT` types (for text, under a deterministic collation).
unsafe fn equality_as_json(opno: pg_sys::Oid, collation: pg_sys::Oid) -> bool {
    let (mut left, mut right) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
    pg_sys::op_input_types(opno, &mut left, &mut right);
    let ints = [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID];
    if ints.contains(&left) && ints.contains(&right) {
        return pg_sys::get_op_opfamily_strategy(opno, INTEGER_BTREE_FAMILY.into())
            == BT_EQUAL_STRATEGY;
    }
    if left != right || !JSON_EXACT.contains(&left) {
        return false;
    }
    let cache = pg_sys::lookup_type_cache(left, pg_sys::TYPECACHE_EQ_OPR as i32);
    (*cache).eq_opr == opno
        && (left != pg_sys::TEXTOID
            || (collation != pg_sys::InvalidOid
                && pg_sys::get_collation_isdeterministic(collation)))
}

/// Whether `node` reads nothing but settings and constants: no column, sub-select or
/// parameter, and only built-in functions that are not volatile. (SQL functions such as
/// `auth.uid()` were inlined into their bodies by `eval_const_expressions`.)
unsafe fn claims_only(node: *mut pg_sys::Node) -> bool {
    unsafe extern "C-unwind" fn refuses(node: *mut pg_sys::Node, _: *mut c_void) -> bool {
        use pg_sys::NodeTag::*;
        if node.is_null() {
            return false;
        }
        // SAFETY: `node` is part of the tree being walked.
        unsafe {
            let allowed = matches!(
                (*node).type_,
                T_Const
                    | T_FuncExpr
                    | T_OpExpr
                    | T_DistinctExpr
                    | T_NullIfExpr
                    | T_ScalarArrayOpExpr
                    | T_BoolExpr
                    | T_RelabelType
                    | T_CoerceViaIO
                    | T_ArrayCoerceExpr
                    | T_CaseExpr
                    | T_CaseWhen
                    | T_CaseTestExpr
                    | T_CoalesceExpr
                    | T_MinMaxExpr
                    | T_SQLValueFunction
                    | T_ArrayExpr
                    | T_NullTest
                    | T_BooleanTest
                    | T_List
            );
            !allowed
                || pg_sys::check_functions_in_node(
                    node,
                    Some(user_or_volatile),
                    std::ptr::null_mut(),
                )
                || pg_sys::expression_tree_walker(node, Some(refuses), std::ptr::null_mut())
        }
    }
    !refuses(node, std::ptr::null_mut())
}

/// `node` as SQL text, names qualified as the worker's `search_path` (pg_catalog) needs.
unsafe fn deparse(node: *mut pg_sys::Node, relid: pg_sys::Oid) -> Option<String> {
    let name = pg_sys::get_rel_name(relid);
    if name.is_null() {
        return None;
    }
    let context = pg_sys::deparse_context_for(name, relid);
    let text = pg_sys::deparse_expression(node, context, false, false);
    (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
}
