//! Which database role a principal acts as, and whether it may: the check every question
//! about a principal starts with (subscriptions, `tables`, snapshot readers).

use crate::gucs;
use pgrx::prelude::*;
use realtime_core::auth::Principal;
use realtime_core::bridge::ResolveError;

pub(super) type Answer<T> = Result<T, ResolveError>;

/// pgrx reports "no row" as an error; here it is an answer.
pub(super) fn optional<T: Default>(result: Result<T, pgrx::spi::Error>) -> Answer<T> {
    match result {
        Ok(v) => Ok(v),
        Err(pgrx::spi::Error::InvalidPosition) => Ok(T::default()),
        Err(e) => Err(ResolveError::Internal(e.to_string())),
    }
}

/// The role `principal` may act as, checked as for a subscription (for snapshot readers).
pub fn usable_role(principal: &Principal) -> Answer<pg_sys::Oid> {
    role(principal).map(|r| r.oid)
}

/// The role a principal acts as, once it is known to be one it may use.
pub(super) struct Role {
    pub oid: pg_sys::Oid,
    /// Superuser or BYPASSRLS: row security never applies.
    pub bypasses_rls: bool,
}

/// Check that `principal`'s role exists and may be used: the anonymous role always (a
/// superuser named it), any other only if realtime.authenticator is a member of it; and a
/// superuser or BYPASSRLS role only if realtime.allow_privileged_roles is on.
pub(super) fn role(principal: &Principal) -> Answer<Role> {
    let anon = gucs::anon_role();
    let authenticator = gucs::authenticator();
    let (oid, privileged, granted) = optional(Spi::get_three_with_args::<i64, bool, bool>(
        "SELECT r.oid::int8, r.rolsuper OR r.rolbypassrls,
                EXISTS (SELECT FROM pg_roles a
                         WHERE a.rolname = $2 AND pg_has_role(a.oid, r.oid, 'MEMBER'))
           FROM pg_roles r WHERE r.rolname = $1",
        &[
            principal.role.as_str().into(),
            authenticator.as_str().into(),
        ],
    ))?;
    let name = &principal.role;
    let Some(oid) = oid else {
        return Err(ResolveError::Unauthorized(format!(
            "role \"{name}\" does not exist"
        )));
    };
    let privileged = privileged == Some(true);
    if privileged && !gucs::allow_privileged_roles() {
        return Err(ResolveError::Unauthorized(format!(
            "role \"{name}\" is a superuser or has BYPASSRLS; realtime.allow_privileged_roles is off"
        )));
    }
    if *name != anon && granted != Some(true) {
        return Err(ResolveError::Unauthorized(if authenticator.is_empty() {
            format!("role \"{name}\" may not be used: realtime.authenticator is not set")
        } else {
            format!(
                "role \"{name}\" is not granted to realtime.authenticator (\"{authenticator}\")"
            )
        }));
    }
    Ok(Role {
        oid: pg_sys::Oid::from(oid as u32),
        bypasses_rls: privileged,
    })
}
