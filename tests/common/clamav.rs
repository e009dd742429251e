//! A private, real clamd for the upload-scanning tests
//! (tests/support/clamav/start.sh: Debian's clamd with a signature
//! database the script writes; `.ci/clamav.sh` installs clamd).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes the test signature `Portcullis.Test.Pattern` matches.
pub const TEST_MALWARE: &[u8] = b"PORTCULLIS-TEST-MALWARE-7f3a";

pub struct Clamd {
    pub port: u16,
    pub socket: PathBuf,
    child: Child,
}

impl Clamd {
    /// Starts clamd and waits until it answers PING. Panics when clamd is
    /// missing: CI installs it, and a scanning test that skips proves nothing.
    pub async fn start() -> Clamd {
        let dir = super::scratch_dir();
        let port = super::oidc::free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/clamav/start.sh");
        let child = Command::new("bash")
            .arg(script)
            .arg(&dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bash runs tests/support/clamav/start.sh (clamd: run .ci/clamav.sh)");
        let clamd = Clamd {
            port,
            socket: dir.join("clamd.sock"),
            child,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if clamd.ping().await {
                return clamd;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "clamd did not answer PING on 127.0.0.1:{port} within 30 s (is clamav-daemon installed? run .ci/clamav.sh)"
        );
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn ping(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"zPING\0").await.is_err() {
            return false;
        }
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut reply)).await;
        reply.starts_with(b"PONG")
    }

    /// Stops clamd (the scanner going down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}
