//! Opening a connection to one upstream target.
//!
//! This is where transport security plugs in: today a target is plain TCP;
//! an `https://` target will wrap the stream here (TLS with SNI and ALPN)
//! before the HTTP layer ([`super::pool`]) sees it.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where a target's connections go.
#[derive(Clone, Debug)]
pub enum Address {
    /// An IP literal: no lookup needed.
    Ip(SocketAddr),
    /// A host name, resolved on every new connection.
    Name(String, u16),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Ip(addr) => addr.fmt(f),
            Address::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl Address {
    /// A new TCP connection, with Nagle off (requests are written whole).
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = match self {
            Address::Ip(addr) => TcpStream::connect(addr).await?,
            Address::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await?,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
