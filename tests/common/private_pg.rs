//! A PostgreSQL server of a test's own (initdb in a temp folder, an
//! ephemeral loopback port), for tests that stop the server outright: the
//! shared one at `PORTCULLIS_TEST_DATABASE_URL` must stay up for the others.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private PostgreSQL server; stopped (and its folder removed) on drop.
pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// As root, the server runs as the `postgres` user (initdb refuses root).
    as_postgres: bool,
    child: Option<Child>,
}

/// The newest installed PostgreSQL's `bin` folder.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// Initialises and starts a server; `None` (skipped, or failed under
    /// CI) when PostgreSQL's server binaries are not installed.
    pub fn start(test: &str) -> Option<PrivatePostgres> {
        let Some(bin) = postgres_bin() else {
            super::skip_or_fail(
                test,
                "PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are missing",
            );
            return None;
        };
        // Under /tmp, not the target folder: the postgres user must reach it.
        let dir = std::env::temp_dir().join(format!("portcullis-pg-{}", portcullis::keys::random_alnum(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown").arg("postgres:").arg(&dir).status().unwrap();
            assert!(status.success(), "chown the PostgreSQL folder");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = PrivatePostgres {
            dir,
            bin,
            port,
            as_postgres,
            child: None,
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.resume();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) on the same port and data, and waits until
    /// it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&self.dir)
            // Durable commits (the defaults): an immediate stop must not
            // lose what the gateway was told is committed.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.accepts() {
            assert!(Instant::now() < deadline, "the private PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn accepts(&self) -> bool {
        let out = self
            .command("pg_isready")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
            .output();
        out.is_ok_and(|o| o.status.success())
    }

    /// Stops the server at once (an immediate shutdown: connections are cut
    /// and new ones refused), as a crash or an operator's stop would.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
