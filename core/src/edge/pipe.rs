//! Snapshots on an edge: the reader runs on the database host (it must read the table), and
//! what it sends is passed through NATS. Here the pipe stands in for the reader: it connects
//! to the edge's own snapshot socket with the session's ticket, takes the session's `Spec`,
//! has the host start a reader for it (`Question::Snapshot`), and copies the reader's bytes
//! back chunk by chunk (`Question::Read`), each asked for only once the previous one was
//! written, so a session that reads slowly slows its reader rather than filling memory.

use super::remote::Remote;
use crate::net::nats::ask::{Answer, Question};
use crate::net::snapshots::SOCKET;
use crate::snapshot::{Frame, Spec};
use base64::Engine;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest `Spec` a session sends (names, columns, an order: small).
const MAX_SPEC: u32 = 1 << 20;

/// Stand in for the reader of the session holding `ticket`, until the snapshot ends or the
/// session leaves.
pub async fn run(remote: Arc<Remote>, ticket: u64) {
    let Ok(mut local) = UnixStream::connect(SOCKET).await else {
        return;
    };
    if let Err(why) = copy(&remote, ticket, &mut local).await {
        // The session reads it as the reader's own failure.
        let _ = local.write_all(&Frame::Failed(why).encode()).await;
    }
}

async fn copy(remote: &Remote, ticket: u64, local: &mut UnixStream) -> Result<(), String> {
    let broken = |e: std::io::Error| e.to_string();
    local.write_u64_le(ticket).await.map_err(broken)?;
    let len = local.read_u32_le().await.map_err(broken)?;
    if len > MAX_SPEC {
        return Err("the snapshot's description is too large".into());
    }
    let mut spec = vec![0; len as usize];
    local.read_exact(&mut spec).await.map_err(broken)?;
    let spec: Spec = serde_json::from_slice(&spec).map_err(|e| e.to_string())?;
    let pipe = match remote.ask(Question::Snapshot { spec }).await {
        Ok(Answer::Pipe(pipe)) => pipe,
        Ok(_) => return Err("the database host answered with something else".into()),
        Err(e) => return Err(e.to_string()),
    };
    loop {
        let (data, end) = match remote.ask(Question::Read { pipe }).await {
            Ok(Answer::Bytes { data, end }) => (data, end),
            Ok(_) => return Err("the database host answered with something else".into()),
            Err(e) => return Err(e.to_string()),
        };
        let data = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| e.to_string())?;
        if local.write_all(&data).await.is_err() {
            // The session left: stop the reader.
            let _ = remote.ask(Question::Close { pipe }).await;
            return Ok(());
        }
        if end {
            return Ok(());
        }
    }
}
