//! A ClamAV daemon client: the `INSTREAM` command over TCP or a Unix
//! socket (clamd's own protocol, documented in clamd(8)): `zINSTREAM\0`,
//! then chunks each prefixed by its length as a 4-byte big-endian number,
//! then a zero length; clamd answers one `\0`-terminated line,
//! `stream: OK`, `stream: <signature> FOUND` or `… ERROR`. No crate speaks
//! it over async sockets with our timeouts, and it is this small.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::ConfigDuration;

/// `[clamav]`: where the scanner is and what to do when it is not there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClamavConfig {
    /// `127.0.0.1:3310`, or a Unix socket path such as `/run/clamav/clamd.ctl`.
    pub address: String,
    /// The longest one scan may take, connection included.
    #[serde(default = "ClamavConfig::default_timeout")]
    pub timeout: ConfigDuration,
    /// `closed` (default): an upload that cannot be scanned is refused with
    /// 503; `open`: it goes through unscanned (counted).
    #[serde(default)]
    pub on_error: OnScanError,
}

impl ClamavConfig {
    fn default_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnScanError {
    #[default]
    Closed,
    Open,
}

/// What clamd said about one stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the scanner could not be reached: {0}")]
    Unreachable(std::io::Error),
    #[error("the scanner did not answer in time")]
    Timeout,
    #[error("the scanner failed: {0}")]
    Failed(String),
    /// clamd refused the stream as longer than its `StreamMaxLength`: the
    /// file is refused, never passed unscanned, whatever `on_error` says.
    #[error("the file is larger than the scanner accepts")]
    TooLarge,
}

/// Where clamd listens.
#[derive(Debug, Clone)]
pub enum Address {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl Address {
    pub fn parse(text: &str) -> Address {
        if text.starts_with('/') || text.starts_with('.') {
            Address::Unix(text.into())
        } else {
            Address::Tcp(text.to_string())
        }
    }
}

/// The most of clamd's answer read (a signature name is short).
const MAX_REPLY: usize = 4096;
/// Bytes per INSTREAM chunk.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Scanner {
    pub address: Address,
    pub timeout: Duration,
    pub on_error: OnScanError,
}

impl Scanner {
    pub fn new(config: &ClamavConfig) -> Scanner {
        Scanner {
            address: Address::parse(&config.address),
            timeout: config.timeout.0,
            on_error: config.on_error,
        }
    }

    /// Scans `data`.
    pub async fn scan(&self, data: &[u8]) -> Result<Verdict, ScanError> {
        let scan = async {
            match &self.address {
                Address::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(ScanError::Unreachable)?;
                    instream(stream, data).await
                }
                Address::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(ScanError::Unreachable)?;
                    instream(stream, data).await
                }
            }
        };
        tokio::time::timeout(self.timeout, scan)
            .await
            .map_err(|_| ScanError::Timeout)?
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    data: &[u8],
) -> Result<Verdict, ScanError> {
    let io = |e: std::io::Error| ScanError::Failed(e.to_string());
    stream.write_all(b"zINSTREAM\0").await.map_err(io)?;
    for chunk in data.chunks(CHUNK) {
        stream
            .write_all(&(chunk.len() as u32).to_be_bytes())
            .await
            .map_err(io)?;
        stream.write_all(chunk).await.map_err(io)?;
    }
    stream.write_all(&0u32.to_be_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut reply = Vec::new();
    let mut limited = (&mut stream).take(MAX_REPLY as u64);
    limited.read_to_end(&mut reply).await.map_err(io)?;
    parse_reply(&reply)
}

/// Reads clamd's answer line.
pub fn parse_reply(reply: &[u8]) -> Result<Verdict, ScanError> {
    let end = reply.iter().position(|&b| b == 0).unwrap_or(reply.len());
    let text = String::from_utf8_lossy(&reply[..end]).trim().to_string();
    let body = text.strip_prefix("stream: ").unwrap_or(&text);
    if body == "OK" {
        Ok(Verdict::Clean)
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Ok(Verdict::Infected(name.to_string()))
    } else if body.contains("size limit exceeded") {
        Err(ScanError::TooLarge)
    } else {
        Err(ScanError::Failed(text.chars().take(200).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_as_clamd_writes_them() {
        assert_eq!(parse_reply(b"stream: OK\0").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply(b"stream: Portcullis.Test.Pattern.UNOFFICIAL FOUND\0").unwrap(),
            Verdict::Infected("Portcullis.Test.Pattern.UNOFFICIAL".into())
        );
        assert!(matches!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            Err(ScanError::TooLarge)
        ));
        assert!(matches!(
            parse_reply(b"stream: some failure ERROR\0"),
            Err(ScanError::Failed(_))
        ));
        assert!(parse_reply(b"").is_err());
    }
}
