//! Wire protocols. Each turns client text into requests and `Change`s into its own frames,
//! encoding a change once for all of its sessions (`bridge::Encoding`).

pub mod native;

use crate::bridge::{Batch, Encoding};

/// Encode, on the thread that publishes `batch` (the worker's), the frames nearly every
/// session sends. Left to the network threads, the first session to reach a change encodes it
/// while sessions on the other thread wait for it, and an encoder the OS deschedules holds up
/// all of them: the p99 at 1,000 clients rose by about 100 ms. (`leave` frames stay lazy.)
pub fn encode_ahead(batch: &Batch) {
    if let Batch::Changes(changes) = batch {
        for change in changes {
            change.encoded(Encoding::NativeChange, native::change_frame);
        }
    }
}
