//! Where the history is published, as the worker hands it over.

use std::time::Duration;

/// Where to publish and the limits of a stream it creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `nats://[user:password@]host:port` (`tls://` for TLS).
    pub url: String,
    /// The stream's name, also its subjects' prefix.
    pub stream: String,
    /// A stream created here keeps what the history keeps.
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Settings {
    /// Why `stream` cannot name a stream and prefix its subjects, if it cannot.
    pub fn check_stream(stream: &str) -> Result<(), String> {
        let fine = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if stream.is_empty() || stream.len() > 64 || !stream.chars().all(fine) {
            return Err(format!(
                "\"{stream}\" is not a stream name: 1 to 64 ASCII letters, digits, _ or -"
            ));
        }
        Ok(())
    }

    /// The URL without its password, for the log.
    pub fn shown_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() || !url.username().is_empty() => {
                let _ = url.set_password(None);
                let _ = url.set_username("…");
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }
}
