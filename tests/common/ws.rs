//! A real WebSocket echo upstream (tokio-tungstenite) and a client helper.
//!
//! The upstream records every handshake's target and headers and every
//! close frame it receives. It picks `chat.v1` when offered, refuses paths
//! ending in `/refuse` with 403, and answers some text messages itself:
//! `close:<code>` closes with that code, `flood:<n>` sends n messages,
//! `big:<n>` sends one of n bytes, `ping?` sends a ping; everything else
//! is echoed.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};

pub type Client = WebSocketStream<TcpStream>;

/// A close frame's code and reason, or `None` for a close without one.
pub type CloseSeen = Option<(u16, String)>;

#[derive(Clone, Debug)]
pub struct Seen {
    pub target: String,
    pub headers: HeaderMap,
}

#[derive(Clone, Default)]
pub struct WsUpstream {
    pub addr: Option<SocketAddr>,
    handshakes: Arc<Mutex<Vec<Seen>>>,
    closes: Arc<Mutex<Vec<CloseSeen>>>,
    messages: Arc<Mutex<usize>>,
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = WsUpstream {
            addr: Some(listener.local_addr().unwrap()),
            ..Default::default()
        };
        let state = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(state.clone().serve(stream));
            }
        });
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    pub fn handshakes(&self) -> Vec<Seen> {
        self.handshakes.lock().unwrap().clone()
    }

    pub fn closes(&self) -> Vec<CloseSeen> {
        self.closes.lock().unwrap().clone()
    }

    pub fn messages(&self) -> usize {
        *self.messages.lock().unwrap()
    }

    async fn serve(self, stream: TcpStream) {
        let seen = self.handshakes.clone();
        // tungstenite's callback type returns its error response by value.
        #[allow(clippy::result_large_err)]
        let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
            seen.lock().unwrap().push(Seen {
                target: req.uri().to_string(),
                headers: req.headers().clone(),
            });
            if req.uri().path().ends_with("/refuse") {
                let mut refusal = ErrorResponse::new(Some("no".into()));
                *refusal.status_mut() = http::StatusCode::FORBIDDEN;
                return Err(refusal);
            }
            let offered = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if offered.split(',').any(|p| p.trim() == "chat.v1") {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", "chat.v1".parse().unwrap());
            }
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Text(text) => {
                    *self.messages.lock().unwrap() += 1;
                    let text = text.to_string();
                    if let Some(code) = text.strip_prefix("close:") {
                        let frame = CloseFrame {
                            code: CloseCode::from(code.parse::<u16>().unwrap()),
                            reason: "bye".into(),
                        };
                        let _ = ws.close(Some(frame)).await;
                    } else if let Some(n) = text.strip_prefix("flood:") {
                        for i in 0..n.parse::<usize>().unwrap() {
                            if ws.send(Message::text(format!("m{i}"))).await.is_err() {
                                return;
                            }
                        }
                    } else if let Some(n) = text.strip_prefix("big:") {
                        let body = "x".repeat(n.parse().unwrap());
                        let _ = ws.send(Message::text(body)).await;
                    } else if ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                Message::Binary(data) => {
                    *self.messages.lock().unwrap() += 1;
                    if ws.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                Message::Close(frame) => {
                    self.closes
                        .lock()
                        .unwrap()
                        .push(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                _ => {}
            }
        }
    }
}

/// Opens a WebSocket to `path` on `addr` with extra handshake headers.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    Error,
> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).await.map_err(Error::Io)?;
    tokio_tungstenite::client_async(request, stream).await
}

/// The HTTP status of a refused handshake.
pub fn refused_status(result: Result<(Client, impl std::fmt::Debug), Error>) -> u16 {
    match result {
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("not an HTTP refusal: {other}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

/// The next data message's text, skipping pings.
pub async fn next_text(ws: &mut Client) -> String {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the close frame (or the end) and returns its code and
/// reason, within `limit`.
pub async fn close_code(ws: &mut Client, limit: std::time::Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the connection closes in time")
        {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}
