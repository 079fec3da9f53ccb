//! The HTTP server: `/metrics` (Prometheus text format) and `/healthz`.
use std::future::Future;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tracing::warn;

use crate::{policy, state::StateHandle};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers ask.
#[derive(Clone)]
pub struct Context {
    pub state: StateHandle,
    pub policy: policy::Handle,
}

pub async fn serve(
    listener: TcpListener,
    ctx: Context,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(ctx);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A fresh page: the policy task folds its kernel counts in, then the state owner collects
/// (kernel maps, cgroupfs) and renders; scrapes that arrive together share one page.
async fn metrics_handler(State(ctx): State<Context>) -> Response {
    ctx.policy.sweep().await;
    match ctx.state.scrape().await {
        Ok(page) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], page).into_response(),
        Err(e) => {
            warn!(error = %e, "scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}
