//! Who may receive, send on and track presence in a channel. A relayed NOTIFY channel is received by members of
//! its readers and sent to by nobody but the database; with `realtime.public_topics` on, any
//! other topic is open to everyone; otherwise row-level security on `realtime.messages`
//! decides, asked as Supabase Realtime asks it: a probe row is inserted (as the worker, which
//! owns the table), read back as the principal with its claims and `realtime.topic()` set
//! (may receive), inserted again as the principal (may send), and all of it rolled back;
//! the same with `extension` 'presence' for who may see and join its presence. Once
//! per subscription, and again when the catalog or the token changes; never per message.

use super::roles::{optional, Answer, Role};
use super::security::{as_sender, as_subscriber, set_setting};
use crate::gucs;
use crate::pg::xact::rolled_back;
use pgrx::prelude::*;
use realtime_core::auth::Principal;
use realtime_core::bridge::{ChannelRights, ResolveError};
use std::ffi::CString;

/// What a principal may do on a channel.
pub struct Rights {
    pub receive: bool,
    pub room: ChannelRights,
}

pub fn rights(channel: &str, role: &Role, principal: &Principal) -> Answer<Rights> {
    let relayed = optional(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM unnest(r.readers) reader
                         WHERE pg_has_role($2, reader::oid, 'MEMBER'))
           FROM realtime.relays r WHERE r.channel = $1",
        &[channel.into(), role.oid.into()],
    ))?;
    if let Some(receive) = relayed {
        let room = ChannelRights::default();
        return Ok(Rights { receive, room });
    }
    if gucs::public_topics() {
        let room = ChannelRights {
            send: true,
            presence: true,
            track: true,
        };
        return Ok(Rights {
            receive: true,
            room,
        });
    }
    let claims = principal.claims.as_str();
    let topic = CString::new(channel).map_err(|_| ResolveError::UnknownChannel(channel.into()))?;
    // Read back: a probe row of each kind, inserted as the table's owner.
    let readable = rolled_back(|| {
        Spi::run_with_args(
            "INSERT INTO realtime.messages (topic, extension)
             VALUES ($1, 'broadcast'), ($1, 'presence')",
            &[channel.into()],
        )?;
        as_subscriber(role.oid, Some(claims), || {
            set_setting(c"realtime.topic", &topic);
            Spi::get_two_with_args::<bool, bool>(
                "SELECT coalesce(bool_or(extension = 'broadcast'), false),
                        coalesce(bool_or(extension = 'presence'), false)
                   FROM realtime.messages WHERE topic = $1",
                &[channel.into()],
            )
        })
    });
    // No SELECT granted, or a policy that raised or ran out of time: refused, and only
    // this principal.
    let (receive, presence) = match readable {
        Ok(Ok((receive, presence))) => (receive == Some(true), presence == Some(true)),
        Ok(Err(_)) | Err(_) => (false, false),
    };
    // Written: as the principal, under its INSERT policies.
    let may_insert = |extension: &str| {
        rolled_back(|| {
            as_sender(role.oid, Some(claims), || {
                set_setting(c"realtime.topic", &topic);
                Spi::run_with_args(
                    "INSERT INTO realtime.messages (topic, extension) VALUES ($1, $2)",
                    &[channel.into(), extension.into()],
                )
            })
        })
        .is_ok_and(|inserted| inserted.is_ok())
    };
    let room = ChannelRights {
        send: receive && may_insert("broadcast"),
        presence: receive && presence,
        track: receive && presence && may_insert("presence"),
    };
    Ok(Rights { receive, room })
}
