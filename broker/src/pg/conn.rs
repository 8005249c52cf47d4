//! One PostgreSQL connection, driven with pgwire's message processing but Basalt's limits.
//! In: an accepted TCP stream. Out: the conversation pgwire's handlers have with the client,
//! or a FATAL ErrorResponse naming the limit that ended it.
//!
//! pgwire's own `process_socket` buffers any message up to 1 GiB and keeps idle connections
//! forever; a server that listens beyond loopback needs bounds:
//! - at most `max_connections` sessions at once: the next client gets SQLSTATE 53300
//!   (`too_many_connections`) after its startup packet, as PostgreSQL answers. Cancel
//!   requests, which come on connections of their own, are not counted;
//! - a message longer than `max_message_bytes` is refused as soon as its length word
//!   arrives, before its body is buffered (SQLSTATE 54000, the connection closes);
//! - a session that sends nothing for `idle_timeout` while no query runs is closed (57P05,
//!   PostgreSQL's `idle_session_timeout`);
//! - startup must finish within 60 s.
//!
//! TLS is not offered (`SSLRequest` and `GSSENCRequest` are answered `N`, and libpq falls
//! back to plain text when `sslmode` allows it).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::{
    ClientInfo, DefaultClient, ErrorHandler, PgWireConnectionState, PgWireServerHandlers,
};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::response::{GssEncResponse, SslResponse};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, SslNegotiationMetaMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Limits of the PostgreSQL front door (`[pg]` in the config).
#[derive(Debug, Clone)]
pub struct PgLimits {
    /// Sessions at once (default 100).
    pub max_connections: usize,
    /// Longest message a client may send, in bytes (default 16 MiB).
    pub max_message_bytes: usize,
    /// A session idle this long between queries is closed (default 10 minutes).
    pub idle_timeout: Duration,
}

impl Default for PgLimits {
    fn default() -> Self {
        PgLimits {
            max_connections: 100,
            max_message_bytes: 16 << 20,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Startup packets are small (user, database, a few settings); PostgreSQL caps them at 10000.
const MAX_STARTUP_BYTES: usize = 10_000;
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// A client message longer than the limit, found from its length word.
#[derive(Debug, thiserror::Error)]
#[error("a message of {declared} bytes exceeds the limit of {limit} bytes")]
pub struct MessageTooLarge {
    pub declared: usize,
    pub limit: usize,
}

/// Frames of the client's byte stream, tracked as they are read: a message's length word is
/// checked before its body is read, so an oversized message never reaches pgwire's buffer.
#[derive(Debug)]
struct FrameGuard {
    limit: usize,
    /// Before the startup packet, messages have no type byte.
    untyped: bool,
    header: [u8; 8],
    have: usize,
    /// Body bytes of the current message still to come.
    skip: usize,
}

impl FrameGuard {
    fn header_len(&self) -> usize {
        if self.untyped {
            8
        } else {
            5
        }
    }

    /// Walks `bytes` (just read from the client).
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), MessageTooLarge> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = self.header_len() - self.have;
            let n = need.min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < self.header_len() {
                // An untyped packet may be shorter than 8 bytes only if malformed; its
                // length word alone already tells the size.
                if self.untyped && self.have >= 4 {
                    self.check(u32::from_be_bytes(self.header[..4].try_into().expect("4")))?;
                }
                continue;
            }
            // The length word counts itself (not the type byte); an untyped packet's header
            // also holds its 4-byte code.
            let (len, rest) = if self.untyped {
                let len = u32::from_be_bytes(self.header[..4].try_into().expect("4"));
                let code = u32::from_be_bytes(self.header[4..8].try_into().expect("4"));
                self.check(len)?;
                if code != SSL_REQUEST_CODE && code != GSSENC_REQUEST_CODE {
                    // A startup packet or a cancel request: typed messages follow.
                    self.untyped = false;
                }
                (len, (len as usize).saturating_sub(8))
            } else {
                let len = u32::from_be_bytes(self.header[1..5].try_into().expect("4"));
                (len, (len as usize).saturating_sub(4))
            };
            self.check(len)?;
            self.skip = rest;
            self.have = 0;
        }
        Ok(())
    }

    fn check(&self, len: u32) -> Result<(), MessageTooLarge> {
        let limit = if self.untyped {
            MAX_STARTUP_BYTES
        } else {
            self.limit
        };
        if len as usize > limit {
            return Err(MessageTooLarge {
                declared: len as usize,
                limit,
            });
        }
        Ok(())
    }
}

/// The client's stream with its frames checked as they are read.
pub struct Guarded {
    inner: TcpStream,
    guard: FrameGuard,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                match this.guard.feed(fresh) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sessions open now, against `max_connections`.
#[derive(Debug, Default)]
pub struct Sessions {
    open: AtomicUsize,
}

/// A counted session; uncounted when dropped.
struct Slot<'a>(&'a Sessions);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sessions {
    fn take(&self, max: usize) -> Option<Slot<'_>> {
        let mut cur = self.open.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match self
                .open
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Slot(self)),
                Err(now) => cur = now,
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

type Socket<ST> = Framed<Guarded, PgWireMessageServerCodec<ST>>;

/// Why a connection was ended by a limit (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client left, or the conversation ended normally.
    Normally,
    TooManyConnections,
    MessageTooLarge,
    Idle,
    StartupTimeout,
}

async fn fatal<ST>(socket: &mut Socket<ST>, code: &str, message: String) {
    let info = ErrorInfo::new("FATAL".into(), code.into(), message);
    let _ = socket
        .send(PgWireBackendMessage::ErrorResponse(info.into()))
        .await;
    let _ = socket.close().await;
}

/// The oversize error inside a failed read, if that is what failed it.
fn too_large(e: &PgWireError) -> Option<&MessageTooLarge> {
    match e {
        PgWireError::IoError(io) => io.get_ref()?.downcast_ref::<MessageTooLarge>(),
        _ => None,
    }
}

/// Serves one connection until the client leaves or a limit ends it.
pub async fn serve_connection<H>(
    tcp: TcpStream,
    handlers: Arc<H>,
    sessions: Arc<Sessions>,
    limits: &PgLimits,
) -> io::Result<Ended>
where
    H: PgWireServerHandlers,
{
    let peer = tcp.peer_addr()?;
    tcp.set_nodelay(true)?;
    let guarded = Guarded {
        inner: tcp,
        guard: FrameGuard {
            limit: limits.max_message_bytes,
            untyped: true,
            header: [0; 8],
            have: 0,
            skip: 0,
        },
    };
    let mut socket: Socket<_> = Framed::new(
        guarded,
        PgWireMessageServerCodec::new(DefaultClient::new(peer, false)),
    );
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    let startup_deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut slot = None;
    loop {
        let awaiting_startup = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingSslRequest
                | PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let next = if awaiting_startup {
            tokio::time::timeout_at(startup_deadline, socket.next()).await
        } else if matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            tokio::time::timeout(limits.idle_timeout, socket.next()).await
        } else {
            Ok(socket.next().await)
        };
        let msg = match next {
            Err(_) if awaiting_startup => return Ok(Ended::StartupTimeout),
            Err(_) => {
                let secs = limits.idle_timeout.as_secs();
                fatal(
                    &mut socket,
                    "57P05",
                    format!("terminating connection due to idle-session timeout ({secs} s)"),
                )
                .await;
                return Ok(Ended::Idle);
            }
            Ok(None) => return Ok(Ended::Normally),
            Ok(Some(Err(e))) => {
                if let Some(big) = too_large(&e) {
                    let message = big.to_string();
                    fatal(&mut socket, "54000", message).await;
                    return Ok(Ended::MessageTooLarge);
                }
                return Ok(Ended::Normally);
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresSsl(_)) => {
                socket
                    .send(PgWireBackendMessage::SslResponse(SslResponse::Refuse))
                    .await?;
                continue;
            }
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresGss(_)) => {
                socket
                    .send(PgWireBackendMessage::GssEncResponse(GssEncResponse::Refuse))
                    .await?;
                continue;
            }
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::None) => {
                socket.set_state(PgWireConnectionState::AwaitingStartup);
                continue;
            }
            PgWireFrontendMessage::Terminate(_) => return Ok(Ended::Normally),
            PgWireFrontendMessage::Startup(_) if slot.is_none() => {
                match sessions.take(limits.max_connections) {
                    Some(s) => slot = Some(s),
                    None => {
                        let max = limits.max_connections;
                        fatal(
                            &mut socket,
                            "53300",
                            format!("sorry, too many clients already (pg.max_connections = {max})"),
                        )
                        .await;
                        return Ok(Ended::TooManyConnections);
                    }
                }
            }
            _ => {}
        }
        let is_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => msg.is_extended_query(),
        };
        let is_cancel = matches!(msg, PgWireFrontendMessage::CancelRequest(_));
        if let Err(mut e) = process_message(
            msg,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await
        {
            errors.on_error(&socket, &mut e);
            let is_fatal = e.is_fatal();
            process_error(&mut socket, e, is_extended).await?;
            if is_fatal {
                return Ok(Ended::Normally);
            }
        }
        if is_cancel {
            return Ok(Ended::Normally);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: usize) -> FrameGuard {
        FrameGuard {
            limit,
            untyped: true,
            header: [0; 8],
            have: 0,
            skip: 0,
        }
    }

    fn untyped(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        v.extend(code.to_be_bytes());
        v.extend(body);
        v
    }

    fn typed(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend(((4 + body.len()) as u32).to_be_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn frames_are_followed_across_reads() {
        let mut stream = untyped(SSL_REQUEST_CODE, &[]);
        stream.extend(untyped(196_608, b"user\0basalt\0\0"));
        stream.extend(typed(b'Q', b"SELECT 1\0"));
        stream.extend(typed(b'Q', &[b'x'; 100]));
        // Any split of the stream into reads gives the same answer.
        for chunk in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut g = guard(200);
            for part in stream.chunks(chunk) {
                g.feed(part).unwrap();
            }
            assert_eq!((g.have, g.skip, g.untyped), (0, 0, false), "chunk {chunk}");
        }
        let mut big = stream.clone();
        big.extend(typed(b'Q', &vec![b'x'; 300]));
        for chunk in [1, 4, 1000] {
            let mut g = guard(200);
            let e = big
                .chunks(chunk)
                .map(|p| g.feed(p))
                .find_map(Result::err)
                .expect("oversized message refused");
            assert_eq!((e.declared, e.limit), (304, 200));
        }
        // A huge startup packet is refused by its length word alone.
        let mut g = guard(1 << 30);
        let e = g.feed(&(1u32 << 30).to_be_bytes()).unwrap_err();
        assert_eq!(e.limit, MAX_STARTUP_BYTES);
    }
}
