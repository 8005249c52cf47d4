//! The Flight service brokers send fragments to. In: `DoGet` with a
//! [`FragmentTicket`] and the cluster token. Out: the fragment's batches as Flight data, then
//! a [`FragmentTrailer`] (scan counters, missing segments) as the last message's
//! `app_metadata`. Every other Flight method is refused.
//!
//! Errors map to gRPC codes by kind: a bad ticket or plan is `InvalidArgument`, an
//! exhausted memory budget or a full queue `ResourceExhausted`, a deadline
//! `DeadlineExceeded`, a missing or wrong token `Unauthenticated`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use basalt_cluster::wire::{
    FragmentTicket, FragmentTrailer, StreamWait, AUTHORIZATION, ERROR_KIND,
};
use basalt_query::{ErrorKind, QueryEngine, QueryError, QueryLimits};
use futures::{Stream, StreamExt};
use prost::Message;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::resolver::StoreResolver;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Fragments executed and failed, for `/metrics`.
#[derive(Debug, Default)]
pub struct FlightCounters {
    pub fragments: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
pub struct FragmentService {
    pub engine: QueryEngine,
    pub resolver: StoreResolver,
    /// The cluster token every call must carry.
    pub token: Arc<String>,
    pub counters: Arc<FlightCounters>,
}

fn status_of(e: &QueryError) -> Status {
    let msg = e.to_string();
    let mut status = match e.kind() {
        ErrorKind::Timeout => Status::deadline_exceeded(msg),
        ErrorKind::Memory | ErrorKind::Overloaded => Status::resource_exhausted(msg),
        ErrorKind::Internal => Status::internal(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        _ => Status::invalid_argument(msg),
    };
    if let Ok(v) = e.kind().name().parse() {
        status.metadata_mut().insert(ERROR_KIND, v);
    }
    status
}

impl FragmentService {
    fn check_token<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let given = req
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(self.token.as_bytes())) {
            return Ok(());
        }
        self.counters
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(Status::unauthenticated(
            "this Flight port serves cluster members only: missing or wrong cluster token",
        ))
    }
}

/// Longest a fragment waits for this server's consumers to reach the positions its broker
/// asks for (a replica a few flushes behind the owner that just failed catches up in
/// milliseconds; one that cannot is reported missing for those partitions instead).
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

impl FragmentService {
    /// Waits until this server's consumers have made every message before each wait's
    /// position queryable, at most [`CATCH_UP_WAIT`] and half of `timeout`; the partitions
    /// that did not get there.
    async fn caught_up(&self, waits: &[StreamWait], timeout: Duration) -> BTreeSet<i32> {
        let until = tokio::time::Instant::now() + CATCH_UP_WAIT.min(timeout / 2);
        let store = self.resolver.store();
        loop {
            let behind: BTreeSet<i32> = waits
                .iter()
                .filter(|w| {
                    let reached = store
                        .table(&w.table)
                        .and_then(|t| t.view().stream_visible(w.partition));
                    reached.is_none_or(|r| r < w.at_least)
                })
                .map(|w| w.partition)
                .collect();
            if behind.is_empty() || tokio::time::Instant::now() >= until {
                if !behind.is_empty() {
                    debug!(partitions = ?behind, "not caught up with the positions the broker asked for");
                }
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn refused<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what}: a Basalt server only runs plan fragments (DoGet)"
    )))
}

#[tonic::async_trait]
impl FlightService for FragmentService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_get(&self, req: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        self.check_token(&req)?;
        let ticket = FragmentTicket::decode(req.into_inner().ticket)
            .map_err(|e| Status::invalid_argument(format!("bad fragment ticket: {e}")))?;
        let limits = QueryLimits {
            timeout: Duration::from_millis(ticket.timeout_ms.max(1)),
            max_rows: ticket.max_rows as usize,
            memory_limit: ticket.memory_limit as usize,
            use_star_tree: !ticket.star_tree_off,
            ..QueryLimits::default()
        };
        let counters = &self.counters;
        counters
            .fragments
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lagging = self.caught_up(&ticket.waits, limits.timeout).await;
        let resolver = self.resolver.for_fragment(lagging);
        let out = self
            .engine
            .execute_fragment(&ticket.plan, Arc::new(resolver.clone()), &limits)
            .await
            .map_err(|e| {
                counters
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(query = %ticket.query_id, error = %e, "fragment failed");
                status_of(&e)
            })?;
        let s = &out.stats;
        let trailer = FragmentTrailer {
            missing: out.missing.clone(),
            num_docs_scanned: s.num_docs_scanned,
            total_docs: s.total_docs,
            num_segments_queried: s.num_segments_queried,
            num_segments_matched: s.num_segments_matched,
            num_segments_pruned: s.num_segments_pruned,
            index_lookups: s.index_lookups,
            blocks_scanned: s.blocks_scanned,
            docs_removed_by_dynamic_filters: s.docs_removed_by_dynamic_filters,
            num_segments_star_tree: s.num_segments_star_tree,
            positions: resolver.positions(),
            groups_unique: out.groups_unique,
        };
        let trailer = serde_json::to_vec(&trailer).map_err(|e| Status::internal(e.to_string()))?;
        let schema = out.schema.clone();
        let batches: Vec<Result<_, FlightError>> = out.batches.iter().cloned().map(Ok).collect();
        // The memory stays reserved until the stream is dropped.
        let held = out;
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter(batches))
            .map(|r| r.map_err(|e| Status::internal(e.to_string())));
        let last = futures::stream::once(async move {
            drop(held);
            Ok(FlightData {
                app_metadata: trailer.into(),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(data.chain(last))))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        refused("Handshake")
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        refused("ListFlights")
    }

    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        refused("GetFlightInfo")
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        refused("PollFlightInfo")
    }

    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        refused("GetSchema")
    }

    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        refused("DoPut")
    }

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        refused("DoExchange")
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        refused("DoAction")
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        refused("ListActions")
    }
}
