//! Who may receive and send on a channel. A relayed NOTIFY channel is received by members of
//! its readers and sent to by nobody but the database; with `realtime.public_topics` on, any
//! other topic is open to everyone; otherwise row-level security on `realtime.messages`
//! decides, asked as Supabase Realtime asks it: a probe row is inserted (as the worker, which
//! owns the table), read back as the principal with its claims and `realtime.topic()` set
//! (may receive), inserted again as the principal (may send), and all of it rolled back. Once
//! per subscription, and again when the catalog or the token changes; never per message.

use super::roles::{optional, Answer, Role};
use super::security::{as_sender, as_subscriber, set_setting};
use crate::gucs;
use crate::pg::xact::rolled_back;
use pgrx::prelude::*;
use realtime_core::auth::Principal;
use realtime_core::bridge::ResolveError;
use std::ffi::CString;

/// What a principal may do on a channel.
pub struct Rights {
    pub receive: bool,
    pub send: bool,
}

pub fn rights(channel: &str, role: &Role, principal: &Principal) -> Answer<Rights> {
    let relayed = optional(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM unnest(r.readers) reader
                         WHERE pg_has_role($2, reader::oid, 'MEMBER'))
           FROM realtime.relays r WHERE r.channel = $1",
        &[channel.into(), role.oid.into()],
    ))?;
    if let Some(receive) = relayed {
        return Ok(Rights {
            receive,
            send: false,
        });
    }
    if gucs::public_topics() {
        return Ok(Rights {
            receive: true,
            send: true,
        });
    }
    let claims = principal.claims.as_str();
    let topic = CString::new(channel).map_err(|_| ResolveError::UnknownChannel(channel.into()))?;
    let probe = rolled_back(|| {
        Spi::run_with_args(
            "INSERT INTO realtime.messages (topic, extension) VALUES ($1, 'broadcast')",
            &[channel.into()],
        )?;
        let receive = as_subscriber(role.oid, Some(claims), || {
            set_setting(c"realtime.topic", &topic);
            Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT FROM realtime.messages
                                 WHERE topic = $1 AND extension = 'broadcast')",
                &[channel.into()],
            )
        })?;
        Ok::<_, pgrx::spi::Error>(receive == Some(true))
    });
    let receive = match probe {
        Ok(Ok(receive)) => receive,
        // No SELECT granted, or a policy that raised or ran out of time: refused, and only
        // this principal.
        Ok(Err(_)) | Err(_) => false,
    };
    let send = receive
        && rolled_back(|| {
            as_sender(role.oid, Some(claims), || {
                set_setting(c"realtime.topic", &topic);
                Spi::run_with_args(
                    "INSERT INTO realtime.messages (topic, extension) VALUES ($1, 'broadcast')",
                    &[channel.into()],
                )
            })
        })
        .is_ok_and(|inserted| inserted.is_ok());
    Ok(Rights { receive, send })
}
