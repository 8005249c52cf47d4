//! The PostgreSQL wire protocol front end (pgwire). In: TCP connections from PostgreSQL
//! clients — psql, psycopg, SQLAlchemy, Grafana's PostgreSQL data source. Out: the answers
//! of the same engine `POST /query/sql` uses, as PostgreSQL rows.
//!
//! [`backend`] runs the simple and extended query protocols, [`encode`] turns Arrow results
//! into typed rows, [`params`] decodes bound parameters. Startup accepts any user and
//! database when authentication is off; with tokens configured ([`Auth`]) it asks for a
//! cleartext password and checks it against the user's token. Cancel requests stop the
//! running query (its DataFusion stream is dropped). [`conn`] drives each connection with
//! Basalt's limits: connection count, message size, idle sessions.

pub mod backend;
pub mod conn;
pub mod encode;
pub mod numeric;
pub mod params;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ConnectionManager, PgWireServerHandlers};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

use crate::auth::Auth;
use crate::http::AppState;
use backend::Backend;

/// Checks PostgreSQL passwords against the configured tokens.
#[derive(Debug)]
struct Tokens(Auth);

#[async_trait]
impl AuthSource for Tokens {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default();
        let token = std::str::from_utf8(presented).unwrap_or_default();
        if self.0.login(user, token).is_some() {
            Ok(None)
        } else {
            tracing::info!(user, "postgres login refused");
            Err(PgWireError::InvalidPassword(user.to_owned()))
        }
    }
}

fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = basalt_query::postgres::SERVER_VERSION.to_string();
    p
}

/// Startup without a password.
#[derive(Debug)]
struct Open {
    manager: Arc<ConnectionManager>,
}

#[async_trait]
impl NoopStartupHandler for Open {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.manager.clone())
    }

    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // The no-password path reports pgwire's own version string; clients parse this one.
        client
            .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                "server_version".into(),
                basalt_query::postgres::SERVER_VERSION.into(),
            )))
            .await?;
        Ok(())
    }
}

/// Startup: open, or a cleartext password checked against the user's token.
struct Startup {
    open: Open,
    password: Option<CleartextPasswordAuthStartupHandler<Tokens, DefaultServerParameterProvider>>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &self.password {
            Some(p) => p.on_startup(client, message).await,
            None => self.open.on_startup(client, message).await,
        }
    }
}

/// Everything one PostgreSQL listener needs.
pub struct PgServer {
    backend: Arc<Backend>,
    startup: Arc<Startup>,
    cancel: Arc<DefaultCancelHandler>,
    limits: conn::PgLimits,
    sessions: Arc<conn::Sessions>,
}

impl PgServer {
    pub fn new(state: &AppState, auth: Auth, limits: conn::PgLimits) -> Self {
        let manager = Arc::new(ConnectionManager::new());
        let password = auth.enabled().then(|| {
            CleartextPasswordAuthStartupHandler::new(Tokens(auth.clone()), parameters())
                .with_connection_manager(manager.clone())
        });
        PgServer {
            backend: Arc::new(Backend::new(
                state.engine.clone(),
                state.limits.query.clone(),
                state.limits.analyst.clone(),
                state.metrics.clone(),
            )),
            startup: Arc::new(Startup {
                open: Open {
                    manager: manager.clone(),
                },
                password,
            }),
            cancel: Arc::new(DefaultCancelHandler::new(manager)),
            limits,
            sessions: Arc::new(conn::Sessions::default()),
        }
    }
}

impl PgWireServerHandlers for PgServer {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// Serves the PostgreSQL protocol on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    server: Arc<PgServer>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "postgres protocol listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let server = server.clone();
                    let metrics = state.metrics.clone();
                    tokio::spawn(async move {
                        metrics.pg_connections.inc();
                        let sessions = server.sessions.clone();
                        let limits = server.limits.clone();
                        match conn::serve_connection(socket, server, sessions, &limits).await {
                            Ok(conn::Ended::Normally) => {}
                            Ok(ended) => {
                                let reason = match ended {
                                    conn::Ended::TooManyConnections => "too_many_connections",
                                    conn::Ended::MessageTooLarge => "message_too_large",
                                    conn::Ended::Idle => "idle_timeout",
                                    _ => "startup_timeout",
                                };
                                tracing::info!(%peer, reason, "postgres connection closed by a limit");
                                metrics.refused.with_label_values(&["postgres", reason]).inc();
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
                            }
                        }
                        metrics.pg_connections.dec();
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a postgres connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
