//! A broker's connection to one server's Flight port. In: the server's address. Out: a
//! Flight client over one HTTP/2 connection (without Nagle), whose requests go to the
//! connection directly.
//!
//! tonic's `Channel` hands each request to a worker task of its own before the connection
//! sees it (its buffer), then reconnects on its own. A fragment's round trip is a few small
//! messages, so that extra hand-off between threads was a visible share of it. Here a failed
//! connection is simply dropped: the call fails, the scatter retries its segments elsewhere
//! and forgets the client ([`super::Cluster::forget_client`]), and the next call connects
//! again.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

/// Longest a connection attempt takes before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest Flight message either side accepts.
const MAX_MESSAGE: usize = 64 << 20;

/// A Flight client of one server.
pub(super) type Client = FlightServiceClient<Direct>;

/// gRPC requests sent straight to one HTTP/2 connection.
#[derive(Clone)]
pub(super) struct Direct(SendRequest<tonic::body::Body>);

/// An open HTTP/2 connection to one server's Flight port.
#[derive(Clone)]
pub(super) struct Connection {
    send: Direct,
    origin: http::Uri,
}

impl Connection {
    /// Whether the connection is gone (the server closed it or failed).
    pub(super) fn is_closed(&self) -> bool {
        self.send.0.is_closed()
    }

    /// A Flight client sending over this connection.
    pub(super) fn client(&self) -> Client {
        FlightServiceClient::with_origin(self.send.clone(), self.origin.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Direct {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResponseFuture {
        Box::pin(self.0.send_request(req))
    }
}

/// Connects to the Flight port at `addr`; the connection is driven by a task on the
/// calling runtime until either side closes it.
pub(super) async fn connect(addr: SocketAddr) -> Result<Connection, String> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {e}")),
            Err(_) => return Err(format!("cannot connect to {addr}: timed out")),
        };
    // No Nagle: a fragment is one small request.
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY towards {addr}: {e}"))?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr} failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(%addr, error = %e, "connection to a server ended");
        }
    });
    let origin: http::Uri = format!("http://{addr}")
        .parse()
        .map_err(|e| format!("bad server address {addr}: {e}"))?;
    Ok(Connection {
        send: Direct(send),
        origin,
    })
}
