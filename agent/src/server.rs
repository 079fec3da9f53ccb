//! The HTTP server: `/metrics` (Prometheus text format) and `/healthz`.
use std::future::Future;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tracing::warn;

use crate::{metrics, policy, state::StateHandle};

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
/// (kernel maps, cgroupfs) and renders; scrapes that arrive together share one page, and its
/// gzip form (made once, for the first of them that accepts gzip).
async fn metrics_handler(State(ctx): State<Context>, headers: HeaderMap) -> Response {
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(metrics::accepts_gzip);
    ctx.policy.sweep().await;
    let page = match ctx.state.scrape().await {
        Ok(page) => page,
        Err(e) => {
            warn!(error = %e, "scrape failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    let vary = (header::VARY, "Accept-Encoding");
    if gzip {
        // compression takes milliseconds: off the async workers
        match tokio::task::spawn_blocking(move || page.gzip()).await {
            Ok(body) => {
                return (
                    [
                        (header::CONTENT_TYPE, TEXT_FORMAT),
                        (header::CONTENT_ENCODING, "gzip"),
                        vary,
                    ],
                    body,
                )
                    .into_response();
            }
            Err(e) => {
                warn!(error = %e, "gzip of /metrics failed");
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
            }
        }
    }
    let body = axum::body::Body::new(page.text());
    ([(header::CONTENT_TYPE, TEXT_FORMAT), vary], body).into_response()
}
