//! The ProcessUtility hook: the statements capture must see that no trigger fires for.
//!
//! - Two-phase commit (`prepared`): PREPARE TRANSACTION names its gid, COMMIT PREPARED reserves
//!   the prepared transaction's queue record, ROLLBACK PREPARED forgets it.
//! - Statements that change who may see what (GRANT and REVOKE, policies, row security, roles
//!   and memberships, owners, functions a policy may call): a catalog-change marker joins the
//!   transaction's captured changes, so that subscribers are authorized again at its place in
//!   commit order, before any change committed after it reaches them.

use super::{pending, prepared, xact};
use pgrx::pg_sys;
use std::ffi::CStr;

static mut PREV_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

pub fn register_hook() {
    // SAFETY: _PG_init, before any statement runs; the previous hook is chained.
    unsafe {
        PREV_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pgrx::pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    use pg_sys::TransactionStmtKind::*;
    let stmt = (*pstmt).utilityStmt;
    let two_phase = if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_TransactionStmt {
        let t = stmt as *mut pg_sys::TransactionStmt;
        let gid =
            (!(*t).gid.is_null()).then(|| CStr::from_ptr((*t).gid).to_string_lossy().into_owned());
        gid.map(|gid| ((*t).kind, gid))
    } else {
        None
    };
    match &two_phase {
        Some((TRANS_STMT_PREPARE, gid)) => prepared::preparing(gid),
        Some((TRANS_STMT_COMMIT_PREPARED, gid)) => xact::reserve_prepared(gid),
        _ => {}
    }
    match PREV_UTILITY_HOOK {
        // Another extension's hook may raise an ERROR (a longjmp): guard it as pg_sys calls are.
        Some(prev) => pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            prev(pstmt, query, read_only_tree, context, params, env, dest, qc)
        }),
        None => pg_sys::standard_ProcessUtility(
            pstmt,
            query,
            read_only_tree,
            context,
            params,
            env,
            dest,
            qc,
        ),
    }
    if let Some((TRANS_STMT_ROLLBACK_PREPARED, gid)) = &two_phase {
        prepared::forget_gid(gid);
    }
    if !stmt.is_null() && changes_authorization(stmt) {
        pending::push_catalog_change();
    }
}

/// Whether a statement (that ran without error) may change what some role may read of a
/// table: privileges, policies, row security, roles, memberships, owners (an owner is exempt
/// from row security), and functions (a policy may call one). Erring on the side of yes only
/// costs an authorization pass.
///
/// # Safety
/// `stmt` is a valid utility statement node.
unsafe fn changes_authorization(stmt: *mut pg_sys::Node) -> bool {
    use pg_sys::NodeTag::*;
    match (*stmt).type_ {
        T_GrantStmt | T_GrantRoleStmt | T_CreatePolicyStmt | T_AlterPolicyStmt
        | T_AlterRoleStmt | T_DropRoleStmt | T_AlterOwnerStmt | T_ReassignOwnedStmt
        | T_DropOwnedStmt | T_CreateFunctionStmt | T_AlterFunctionStmt => true,
        T_DropStmt => {
            use pg_sys::ObjectType::*;
            matches!(
                (*(stmt as *mut pg_sys::DropStmt)).removeType,
                OBJECT_POLICY | OBJECT_FUNCTION | OBJECT_PROCEDURE | OBJECT_ROUTINE
            )
        }
        T_RenameStmt => {
            (*(stmt as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_ROLE
        }
        T_AlterTableStmt => {
            let cmds = pgrx::PgList::<pg_sys::AlterTableCmd>::from_pg(
                (*(stmt as *mut pg_sys::AlterTableStmt)).cmds,
            );
            use pg_sys::AlterTableType::*;
            let changes = [
                AT_EnableRowSecurity,
                AT_DisableRowSecurity,
                AT_ForceRowSecurity,
                AT_NoForceRowSecurity,
                AT_ChangeOwner,
            ];
            let any = cmds.iter_ptr().any(|cmd| changes.contains(&(*cmd).subtype));
            any
        }
        _ => false,
    }
}
