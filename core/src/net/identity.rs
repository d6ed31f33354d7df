//! Who a connection acts as, whatever protocol it speaks: the token it presented (in the
//! upgrade request or a later message), the principal the worker accepted for it, and its
//! place in realtime.max_connections_per_role.

use crate::auth::{AuthError, Principal, LEEWAY_SECS};
use crate::bridge::{ResolveError, Shared, WorkerHandle};
use crate::protocol::native::{Coded, ErrorCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a connection may not act as what it asked for.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Token(#[from] AuthError),
    #[error(transparent)]
    Role(#[from] ResolveError),
    #[error("role \"{role}\" already has {max} connections (realtime.max_connections_per_role)")]
    TooManyConnections { role: String, max: usize },
}

impl Coded for Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::Token(e) => e.code(),
            Refusal::Role(e) => e.code(),
            Refusal::TooManyConnections { .. } => ErrorCode::TooManyConnections,
        }
    }
}

/// A connection counted for its role until dropped.
struct RoleSlot {
    shared: Arc<Shared>,
    role: String,
}

impl Drop for RoleSlot {
    fn drop(&mut self) {
        self.shared.release_role(&self.role);
    }
}

pub struct Identity {
    shared: Arc<Shared>,
    worker: WorkerHandle,
    acting: Result<Arc<Principal>, AuthError>,
    _slot: Option<RoleSlot>,
}

impl Identity {
    /// The identity a connection starts with: its token's, or the anonymous role's, or none
    /// yet (it may still send one) when there is no token and no anonymous role.
    pub async fn start(
        token: Option<&str>,
        shared: Arc<Shared>,
        worker: WorkerHandle,
    ) -> Result<Identity, Refusal> {
        let mut identity = Identity {
            shared,
            worker,
            acting: Err(AuthError::NoToken),
            _slot: None,
        };
        match token {
            Some(token) => {
                identity.sign_in(Some(token)).await?;
            }
            None => match identity.shared.auth().anonymous() {
                Ok(_) => {
                    identity.sign_in(None).await?;
                }
                Err(e) => identity.acting = Err(e),
            },
        }
        Ok(identity)
    }

    /// Act as `token`'s principal (or the anonymous role's) from now on. On refusal the
    /// connection keeps acting as before.
    pub async fn sign_in(&mut self, token: Option<&str>) -> Result<Arc<Principal>, Refusal> {
        let auth = self.shared.auth();
        let principal = Arc::new(match token {
            Some(token) => auth.verify(token)?,
            None => auth.anonymous()?,
        });
        // Whether a role may be used does not depend on the claims: asked once per role
        // until the catalogs (or settings) change.
        if !self.shared.recently_authorized(&principal.role) {
            let epoch = *self.shared.catalog_epoch.borrow();
            self.worker.authorize(principal.clone()).await?;
            self.shared.note_authorized(&principal.role, epoch);
        }
        let same_role = matches!(&self.acting, Ok(p) if p.role == principal.role);
        if !same_role {
            let max = self.shared.limits().max_connections_per_role;
            if !self.shared.take_role(&principal.role, max) {
                return Err(Refusal::TooManyConnections {
                    role: principal.role.clone(),
                    max,
                });
            }
            self._slot = Some(RoleSlot {
                shared: self.shared.clone(),
                role: principal.role.clone(),
            });
        }
        self.acting = Ok(principal.clone());
        Ok(principal)
    }

    /// The principal to subscribe as, or why there is none.
    pub fn principal(&self) -> Result<&Arc<Principal>, AuthError> {
        self.acting.as_ref().map_err(Clone::clone)
    }

    /// How long until the token is no longer accepted (`exp` plus the leeway), if it
    /// expires and is still in use.
    pub fn expires_in(&self) -> Option<Duration> {
        let expires = self.acting.as_ref().ok()?.expires? + LEEWAY_SECS;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        Some(Duration::from_secs(expires).saturating_sub(now))
    }

    /// The token expired: nothing more is delivered or subscribed until a fresh one arrives.
    pub fn expire(&mut self) {
        self.acting = Err(AuthError::Expired);
    }
}
