//! The metrics endpoint: plain HTTP on `metrics_listen`, `GET /metrics` in the Prometheus text
//! format (0.0.4). It serves nothing else and reads no request body, so it needs no
//! credentials (like the health port); a NetworkPolicy decides who may scrape it.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Sample;

/// Reads the node's state at each scrape.
pub type Sampler = Arc<dyn Fn() -> Sample + Send + Sync>;

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    sampler: Sampler,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let sampler = sampler.clone();
            async move {
                let body = super::render(&sampler());
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
