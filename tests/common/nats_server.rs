//! A nats-server (Debian's `nats-server` package) with JetStream on a loopback port, its
//! store in a directory of its own, for the tests of both crates.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    config: String,
}

impl Server {
    /// Started with `config` (nats-server's configuration format) added to its own.
    pub fn start(name: &str, config: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("realtime_nats_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Server {
            dir,
            port,
            child: None,
            config: config.to_string(),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let config = self.dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n{}\n",
                self.port,
                self.dir.join("store"),
                self.config
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log")).unwrap())
            .spawn()
            .expect("nats-server (Debian's nats-server package; ./test.sh installs it)");
        self.child = Some(child);
        wait_until("nats-server to listen", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// kill -9 and start again on the same store.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.run();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One message of a stream as stored.
pub struct Stored {
    pub subject: String,
    /// Its `Realtime-Position` and `Nats-Msg-Id` headers.
    pub position: u64,
    pub id: String,
    pub payload: Vec<u8>,
}

/// Everything stream `name` holds, in stream order (none when there is no such stream).
pub fn messages(url: &str, name: &str) -> Vec<Stored> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let Ok(mut stream) = js.get_stream(name).await else {
            return Vec::new();
        };
        let state = stream.info().await.unwrap().state.clone();
        let mut stored = Vec::new();
        for sequence in state.first_sequence.max(1)..=state.last_sequence {
            let m = stream.get_raw_message(sequence).await.unwrap();
            let header = |n| m.headers.get(n).unwrap().as_str().to_string();
            stored.push(Stored {
                subject: m.subject.to_string(),
                position: header("Realtime-Position").parse().unwrap(),
                id: header("Nats-Msg-Id"),
                payload: m.payload.to_vec(),
            });
        }
        stored
    })
}
