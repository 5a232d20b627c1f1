//! The scrape endpoint: `GET /metrics` over plain HTTP/1.1.
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::{render, Sources};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, src: Sources) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(src));
    axum::serve(listener, app).await
}

async fn scrape(State(src): State<Arc<Sources>>) -> Response {
    // A scrape walks the whole conntrack map (a million entries: ~0.3 s).
    match tokio::task::spawn_blocking(move || render(&src)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
