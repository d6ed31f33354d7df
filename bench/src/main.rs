//! Load generator for realtime_ext and the baseline it replaces. One process drives thousands
//! of WebSocket clients (spread over 127.0.0.x source addresses) and one writer.
//!
//! realtime_bench <scenario> [--target realtime|bridge|relay] [--pg CONNINFO] [--ws URL] [options] [--json FILE]
//!   latency  --clients N --events E --rate R [--payload BYTES]   commit->client latency
//!   fanout   --clients N --seconds S --batch B [--rate R]        delivered messages/s (R: rows/s, 0: flat out)
//!   idle     --clients N --worker-pid PID [--hold S]             memory per idle connection, subscribe time;
//!                                                                then holds them S seconds
//!   count    --events E [--idle S]                               receive E changes (bulk transaction check),
//!                                                                or until none came for S seconds
//!   rls      --clients N --events E --rate R --mode M [--secret S --worker-pid PID]
//!            row-level security: N clients, each a distinct user, each change visible to one
//!            of them. M: policy (owner = claim, compiled), subselect (a policy the worker judges
//!            per batch), filter (no RLS, each client filtered to its rows: the baseline),
//!            perquery (no delivery: one query per subscriber per change, as Supabase checks),
//!            gated (a function of the claims the worker judges per user; with --troubled 1,
//!            two more users whose policy sleeps 2 s or raises)
//!   resume   --clients N --steady M --rate R --before S --away S --after S
//!            N clients drop for `away` seconds while one writer commits R rows/s, then resume
//!            with `since`; M clients stay connected. Time until each resumed client caught up,
//!            rows lost or twice, and the steady clients' latency meanwhile
//!   snapshot --rows N --steady M --rate R --baseline S
//!            One client reads an N-row table with `snapshot: true` while M clients receive R
//!            changes/s of another: rows/s, and their latency during the read against the S
//!            seconds before it.
//!   shout    --clients N --seconds S --rate R
//!            one connection broadcasts R a second to N subscribers of a channel (needs
//!            realtime.public_topics and a realtime.broadcast_rate of at least R): delivered/s, latency
//!   floor-server --port P                                        a broadcaster with no database (see floor.rs);
//!                                                                measure it with latency --target floor, or
//!                                                                --target committed-floor --pg ... (the writer
//!                                                                commits each row to a plain table, then tells it)
//!
//! Any scenario: --ws wss://... --ca CERT.pem connects over TLS, trusting CERT; --ws URL1,URL2
//! spreads the subscribers over several servers (edge servers) in turn.
//!
//! Latency is measured from a timestamp the writer puts in the row just before it commits to the
//! client's receipt, on the same machine clock, the same way for both targets.

mod client;
mod floor;
mod scenarios;

use std::collections::HashMap;

#[derive(Clone)]
pub struct Args {
    scenario: String,
    values: HashMap<String, String>,
}

impl Args {
    fn parse() -> Args {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let scenario = argv.first().cloned().unwrap_or_else(|| usage());
        let mut values = HashMap::new();
        let mut i = 1;
        while i < argv.len() {
            let key = argv[i]
                .strip_prefix("--")
                .unwrap_or_else(|| usage())
                .to_string();
            let value = argv.get(i + 1).cloned().unwrap_or_else(|| usage());
            values.insert(key, value);
            i += 2;
        }
        Args { scenario, values }
    }
    pub fn str(&self, key: &str, default: &str) -> String {
        self.values
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
    pub fn num(&self, key: &str, default: f64) -> f64 {
        self.values.get(key).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{key} takes a number"))
        })
    }
    pub fn target(&self) -> client::Target {
        match self.str("target", "realtime").as_str() {
            "realtime" => client::Target::Realtime,
            "bridge" => client::Target::Bridge,
            "relay" => client::Target::Relay,
            "floor" => client::Target::Floor,
            "committed-floor" => client::Target::CommittedFloor,
            other => panic!("unknown --target {other}"),
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: realtime_bench latency|fanout|idle|count|floor-server [--option value]...  (see src/main.rs)");
    std::process::exit(2)
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    client::raise_fd_limit();
    let args = Args::parse();
    if let Some(ca) = args.values.get("ca") {
        client::trust(ca);
    }
    let result = match args.scenario.as_str() {
        "latency" => scenarios::latency(&args).await,
        "fanout" => scenarios::fanout(&args).await,
        "idle" => scenarios::idle(&args).await,
        "count" => scenarios::count(&args).await,
        "rls" => scenarios::rls(&args).await,
        "resume" => scenarios::resume(&args).await,
        "snapshot" => scenarios::snapshot(&args).await,
        "shout" => scenarios::shout(&args).await,
        "presence" => scenarios::presence(&args).await,
        "floor-server" => floor::serve(args.num("port", 8090.0) as u16).await,
        _ => usage(),
    };
    println!("{result}");
    if let Some(path) = args.values.get("json") {
        std::fs::write(path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    }
}
