//! Who a connection acts as, whatever protocol it speaks: the token it presented (in the
//! upgrade request or a later message), the principal the worker accepted for it, and its
//! place in realtime.max_connections_per_role.

use crate::auth::{AuthError, Principal, LEEWAY_SECS};
use crate::bridge::{ResolveError, WorkerHandle};
use crate::net::shared::Shared;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longer than any token may be valid for (`auth::MAX_TOKEN_TIME`): what "never" means to a
/// timer.
pub const NEVER: Duration = Duration::from_secs(8_000 * 365 * 24 * 3600);

/// Why a connection may not act as what it asked for.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Token(#[from] AuthError),
    #[error(transparent)]
    Role(#[from] ResolveError),
    #[error("role \"{role}\" already has {max} connections (realtime.max_connections_per_role)")]
    TooManyConnections { role: String, max: usize },
    #[error("this address already has {max} anonymous connections (realtime.max_anonymous_per_address); sign in with a token")]
    TooManyAnonymous { max: usize },
}

/// A connection counted for its role, or as anonymous for its address, until dropped.
enum Slot {
    Role(Arc<Shared>, String),
    Anonymous(Arc<Shared>, IpAddr),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self {
            Slot::Role(shared, role) => shared.release_role(role),
            Slot::Anonymous(shared, address) => shared.release_anonymous(*address),
        }
    }
}

pub struct Identity {
    shared: Arc<Shared>,
    worker: WorkerHandle,
    address: IpAddr,
    acting: Result<Arc<Principal>, AuthError>,
    _role: Option<Slot>,
    _anonymous: Option<Slot>,
}

impl Identity {
    /// The identity a connection starts with: its token's, or the anonymous role's, or none
    /// yet (it may still send one) when there is no token and no anonymous role.
    pub async fn start(
        token: Option<&str>,
        shared: Arc<Shared>,
        worker: WorkerHandle,
        address: IpAddr,
    ) -> Result<Identity, Refusal> {
        let mut identity = Identity {
            shared,
            worker,
            address,
            acting: Err(AuthError::NoToken),
            _role: None,
            _anonymous: None,
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
        let limits = self.shared.limits();
        // Anonymous connections from one address cannot use up the anonymous role's budget
        // for every other address.
        let was_anonymous = matches!(&self.acting, Ok(p) if p.anonymous);
        let anonymous = match (principal.anonymous, was_anonymous) {
            (true, false) => {
                let max = limits.max_anonymous_per_address;
                if !self.shared.take_anonymous(self.address, max) {
                    return Err(Refusal::TooManyAnonymous { max });
                }
                Some(Some(Slot::Anonymous(self.shared.clone(), self.address)))
            }
            (false, true) => Some(None),
            _ => None,
        };
        let same_role = matches!(&self.acting, Ok(p) if p.role == principal.role);
        if !same_role {
            let max = limits.max_connections_per_role;
            if !self.shared.take_role(&principal.role, max) {
                return Err(Refusal::TooManyConnections {
                    role: principal.role.clone(),
                    max,
                });
            }
            self._role = Some(Slot::Role(self.shared.clone(), principal.role.clone()));
        }
        if let Some(slot) = anonymous {
            self._anonymous = slot;
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
        let expires = self
            .acting
            .as_ref()
            .ok()?
            .expires?
            .saturating_add(LEEWAY_SECS);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        // Bounded, so that adding it to a clock reading cannot overflow.
        Some(Duration::from_secs(expires).saturating_sub(now).min(NEVER))
    }

    /// The token expired: nothing more is delivered or subscribed until a fresh one arrives.
    pub fn expire(&mut self) {
        self.acting = Err(AuthError::Expired);
    }
}
