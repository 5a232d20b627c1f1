//! A tower layer that counts finished gRPC requests by method and status
//! code. The code of a successful call is in the trailers, after the body,
//! so the response body is wrapped to see it.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::ApiStats;

#[derive(Clone)]
pub struct CountLayer(pub Arc<ApiStats>);

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            stats: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    stats: Arc<ApiStats>,
}

/// Records once, when the call's outcome is known; dropped unrecorded, the
/// client went away before the end.
struct Recorder {
    stats: Arc<ApiStats>,
    method: String,
    code: Option<&'static str>,
}

impl Recorder {
    /// The outcome, recorded when the recorder is dropped.
    fn set(&mut self, code: &'static str) {
        self.code = Some(code);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let code = self.code.unwrap_or("CANCELLED");
        // Unknown paths are client input: one series for all of them.
        let method = if code == "UNIMPLEMENTED" {
            "unknown".to_owned()
        } else {
            std::mem::take(&mut self.method)
        };
        self.stats.record(method, code);
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<&'static str> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(code_name(Code::from_i32(v)))
}

/// The canonical names of the gRPC status codes.
fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Count<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut rec = Recorder {
            stats: self.stats.clone(),
            method: req.uri().path().to_owned(),
            code: None,
        };
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let res = match inner.call(req).await {
                Ok(res) => res,
                Err(e) => {
                    rec.set("UNKNOWN");
                    return Err(e);
                }
            };
            // Errors come "trailers-only": the code is in the headers.
            let rec = match grpc_code(res.headers()) {
                Some(code) => {
                    rec.set(code);
                    None
                }
                None => Some(rec),
            };
            Ok(res.map(|body| CountedBody { inner: body, rec }))
        })
    }
}

pin_project_lite::pin_project! {
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        rec: Option<Recorder>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    if let Some(rec) = this.rec.as_mut() {
                        rec.set(code);
                    }
                    *this.rec = None;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(rec) = this.rec.as_mut() {
                    rec.set("UNKNOWN");
                }
                *this.rec = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc_code(&h), Some("NOT_FOUND"));
        assert_eq!(grpc_code(&HeaderMap::new()), None);
    }
}
