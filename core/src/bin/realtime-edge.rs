//! `realtime-edge [--config FILE]`: serve realtime_ext's clients away from the database host.
//! Settings: docs/scaling.md.

fn main() {
    let mut args = std::env::args().skip(1);
    let file = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--config"), Some(file)) => Some(std::path::PathBuf::from(file)),
        _ => {
            eprintln!("usage: realtime-edge [--config FILE]  (settings: REALTIME_EDGE_* in the environment override the file's)");
            std::process::exit(2);
        }
    };
    let result = realtime_core::edge::Config::read(file.as_deref(), std::env::vars())
        .and_then(realtime_core::edge::run);
    if let Err(e) = result {
        eprintln!("realtime-edge: {e}");
        std::process::exit(1);
    }
}
