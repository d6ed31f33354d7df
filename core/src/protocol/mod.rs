//! Wire protocols. Each turns client text into requests and `Change`s into its own frames,
//! encoding a change once for all of its sessions (`bridge::Encoding`).

pub mod native;
