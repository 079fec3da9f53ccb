//! The HTTP server: `/metrics` (Prometheus text format) and `/healthz`.
use std::{future::Future, sync::Arc, time::Instant};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tracing::warn;

use crate::{metrics, state::Shared};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(shared): State<Arc<Shared>>) -> Response {
    let start = Instant::now();
    // Read the kernel now, so a scrape always sees current numbers.
    if let Err(e) = shared.collect(false).await {
        warn!(error = %e, "collection for scrape failed");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("collection failed: {e}\n"),
        )
            .into_response();
    }
    shared.policy.sweep().await;
    let policy = shared
        .policy
        .snapshot
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let st = shared.state.lock().await;
    let rendered = metrics::render(
        &metrics::Inputs {
            model: &st.model,
            registry: &st.registry,
            info: &shared.info,
            cfg: &shared.config.metrics,
            hub: Some(&shared.hub),
            procs_evicted: st.procs.evicted_total,
            procs_live: st.procs.len(),
            net: shared.config.network.enabled.then_some(&st.net),
            network: Some(&shared.config.network),
            policy: Some(&policy),
        },
        &shared.own,
    );
    drop(st);
    shared.own.observe_scrape(start.elapsed().as_secs_f64());
    match rendered {
        Ok((text, _dropped)) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("render failed: {e}\n"),
        )
            .into_response(),
    }
}
