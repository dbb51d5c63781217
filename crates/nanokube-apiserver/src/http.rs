//! HTTP plumbing: response bodies, JSON/YAML/Status responses,
//! and content negotiation of `Accept` (JSON, YAML, Table, PartialObjectMetadata).

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nanokube_api::ApiError;
use serde_json::Value;

/// The response body type: a whole body or a stream.
pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A body streamed from a channel, ending when the sender goes.
pub fn channel(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);
    impl http_body::Body for Channel {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
        }
    }
    Channel(rx).boxed()
}

/// A JSON response (ending with a newline, as Go's encoder writes every object).
pub fn json(code: StatusCode, v: &Value) -> Response<Body> {
    let mut b = serde_json::to_vec(v).expect("serialize");
    b.push(b'\n');
    bytes_response(code, "application/json", Bytes::from(b))
}

/// A body of encoded JSON followed by the newline kube-apiserver's encoder ends every
/// object with, sent as two frames so the (shared, cached) bytes are not copied; its
/// exact size still makes a `Content-Length`.
struct ThenNewline {
    data: Option<Bytes>,
    newline: bool,
}

impl http_body::Body for ThenNewline {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        if self.newline {
            self.newline = false;
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"\n")))));
        }
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !self.newline
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64) + self.newline as u64)
    }
}

/// A response body that holds `held` (an unread request body) until it is dropped.
pub fn holding(inner: Body, held: hyper::body::Incoming) -> Body {
    Holding { inner, _held: held }.boxed()
}

struct Holding {
    inner: Body,
    _held: hyper::body::Incoming,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response of encoded JSON (an object, a list, a Table) with the trailing newline, in
/// two frames: only for answers given after the request body was read (see [`error`]).
pub fn json_bytes(code: StatusCode, content_type: &str, b: Bytes) -> Response<Body> {
    let mut r = Response::new(ThenNewline { data: Some(b), newline: true }.boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")));
    r
}

/// A response with a content type.
pub fn bytes_response(code: StatusCode, content_type: &str, b: Bytes) -> Response<Body> {
    let mut r = Response::new(full(b));
    *r.status_mut() = code;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")));
    r
}

/// A plain-text response.
pub fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    bytes_response(code, "text/plain; charset=utf-8", Bytes::from(body.into()))
}

/// An error as a `metav1.Status` response.
pub fn error(e: &ApiError) -> Response<Body> {
    // One frame: an error may be answered before the request body is read, and over
    // HTTP/2 the stream is then reset as soon as the response ends; a second frame could
    // follow the reset (curl: "Stream error in the HTTP/2 framing layer").
    let mut body = e.to_status_json();
    body.push(b'\n');
    let mut r = bytes_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "application/json", Bytes::from(body));
    if let Some(s) = e.details.retry_after {
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// How a response should be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Plain JSON objects and Lists.
    Json,
    /// YAML.
    Yaml,
    /// `meta.k8s.io` Table (v1 or v1beta1).
    Table(&'static str),
    /// `PartialObjectMetadata` / `PartialObjectMetadataList` (v1 or v1beta1).
    PartialMetadata(&'static str),
}

impl Output {
    /// The Content-Type of a response in this encoding.
    pub fn content_type(&self, list: bool) -> String {
        match self {
            Output::Json => "application/json".into(),
            Output::Yaml => "application/yaml".into(),
            Output::Table(v) => format!("application/json;as=Table;v={v};g=meta.k8s.io"),
            Output::PartialMetadata(v) => {
                format!("application/json;as={};v={v};g=meta.k8s.io", if list { "PartialObjectMetadataList" } else { "PartialObjectMetadata" })
            }
        }
    }
}

/// One media range of an Accept header.
#[derive(Debug, Default)]
pub struct MediaRange<'a> {
    /// `type/subtype`.
    pub mime: &'a str,
    /// `as=` parameter.
    pub as_: &'a str,
    /// `g=` parameter.
    pub g: &'a str,
    /// `v=` parameter.
    pub v: &'a str,
}

/// Parse an Accept header into media ranges (in order; q-values are ignored, as clients
/// list their preference first).
pub fn media_ranges(accept: &str) -> Vec<MediaRange<'_>> {
    accept
        .split(',')
        .map(|part| {
            let mut it = part.split(';');
            let mut m = MediaRange { mime: it.next().unwrap_or("").trim(), ..Default::default() };
            for p in it {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim() {
                        "as" => m.as_ = v.trim(),
                        "g" => m.g = v.trim(),
                        "v" => m.v = v.trim(),
                        _ => {}
                    }
                }
            }
            m
        })
        .collect()
}

fn meta_version(v: &str) -> Option<&'static str> {
    match v {
        "v1" => Some("v1"),
        "v1beta1" => Some("v1beta1"),
        _ => None,
    }
}

/// Choose the response encoding for a resource request.
pub fn negotiate(accept: Option<&str>) -> Result<Output, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Ok(Output::Json) };
    let mut saw_protobuf = false;
    for m in media_ranges(accept) {
        match (m.mime, m.as_) {
            ("application/json", "Table") if m.g == "meta.k8s.io" => {
                if let Some(v) = meta_version(m.v) {
                    return Ok(Output::Table(v));
                }
            }
            ("application/json", "PartialObjectMetadata" | "PartialObjectMetadataList") if m.g == "meta.k8s.io" => {
                if let Some(v) = meta_version(m.v) {
                    return Ok(Output::PartialMetadata(v));
                }
            }
            ("application/json" | "*/*" | "application/*", "") => return Ok(Output::Json),
            ("application/yaml", "") => return Ok(Output::Yaml),
            ("application/vnd.kubernetes.protobuf", _) => saw_protobuf = true,
            _ => {}
        }
    }
    let _ = saw_protobuf;
    Err(ApiError::not_acceptable("only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"))
}

/// Encode a single object (not a list) as JSON or YAML for a response.
pub fn encode(output: Output, code: StatusCode, v: &Value) -> Response<Body> {
    match output {
        Output::Yaml => bytes_response(code, "application/yaml", Bytes::from(serde_norway::to_string(v).unwrap_or_default())),
        o => bytes_response(code, &o.content_type(false), Bytes::from(nanokube_api::go_order::to_vec(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_get_accept_picks_table() {
        let a = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(a)).unwrap(), Output::Table("v1"));
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf,application/json")).unwrap(), Output::Json);
        assert_eq!(negotiate(Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")).unwrap(), Output::PartialMetadata("v1"));
        assert_eq!(negotiate(None).unwrap(), Output::Json);
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf")).unwrap_err().code, 406);
    }
}
