//! A quick answer to a 2025-11-25 session's POST goes out in one write.
//!
//! rmcp answers such a POST with an event stream whose head (and SSE priming event) are ready
//! before the handler has answered. Sent as they come, every call costs two writes to the socket
//! and wakes the client twice; on a busy two-core node that was a sixth of an MCP call's CPU.
//! The stream of a POST ends with the call's answer, so an answer that arrives within
//! [`QUICK_ANSWER`] is sent whole. A slower call streams from that point, exactly as rmcp sends
//! it: progress notifications and keep-alives of long calls are held back by at most that long.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures_util::StreamExt;
use futures_util::stream;

/// How long an event stream's first bytes may wait for the rest of a quick answer.
pub const QUICK_ANSWER: Duration = Duration::from_millis(50);

/// Whether `headers` describe an event stream, the only responses worth holding.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("text/event-stream"))
}

/// Collects `response`'s body for up to `wait`: a body that ends within it is sent as one
/// buffer; otherwise what arrived goes first and the rest streams as it comes.
pub async fn coalesce(response: Response, wait: Duration) -> Response {
    let (parts, body) = response.into_parts();
    let mut frames = body.into_data_stream();
    let deadline = tokio::time::Instant::now() + wait;
    let mut collected: Vec<u8> = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, frames.next()).await {
            Ok(Some(Ok(bytes))) => collected.extend_from_slice(&bytes),
            Ok(None) => return Response::from_parts(parts, Body::from(collected)),
            Ok(Some(Err(error))) => {
                let head = stream::iter([Ok(Bytes::from(collected)), Err(error)]);
                return Response::from_parts(parts, Body::from_stream(head));
            }
            Err(_elapsed) if collected.is_empty() => return Response::from_parts(parts, Body::from_stream(frames)),
            Err(_elapsed) => {
                let head = stream::once(async { Ok::<_, axum::Error>(Bytes::from(collected)) });
                return Response::from_parts(parts, Body::from_stream(head.chain(frames)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use futures_util::stream::BoxStream;
    use tokio::sync::mpsc;

    fn event_stream(body: Body) -> Response {
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        response
    }

    fn chunks(frames: mpsc::UnboundedReceiver<&'static str>) -> BoxStream<'static, Result<Bytes, axum::Error>> {
        stream::unfold(frames, |mut frames| async move {
            frames.recv().await.map(|frame| (Ok(Bytes::from(frame)), frames))
        })
        .boxed()
    }

    async fn next_chunk(body: &mut axum::body::BodyDataStream) -> String {
        String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_stream_that_ends_in_time_is_one_buffer_with_every_byte() {
        let (sender, receiver) = mpsc::unbounded_channel();
        sender.send("id: 0\nretry: 3000\n\n").unwrap();
        let response = event_stream(Body::from_stream(chunks(receiver)));
        let answering = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            sender.send("data: {\"id\":1}\n\n").unwrap();
        });

        let response = coalesce(response, Duration::from_secs(5)).await;
        answering.await.unwrap();

        assert!(is_event_stream(response.headers()));
        let mut body = response.into_body().into_data_stream();
        assert_eq!(
            next_chunk(&mut body).await,
            "id: 0\nretry: 3000\n\ndata: {\"id\":1}\n\n"
        );
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_slow_stream_sends_what_it_has_then_streams_the_rest() {
        let (sender, receiver) = mpsc::unbounded_channel();
        sender.send("id: 0\nretry: 3000\n\n").unwrap();
        let response = event_stream(Body::from_stream(chunks(receiver)));

        let response = coalesce(response, Duration::from_millis(20)).await;

        let mut body = response.into_body().into_data_stream();
        assert_eq!(next_chunk(&mut body).await, "id: 0\nretry: 3000\n\n");
        sender
            .send("data: {\"method\":\"notifications/progress\"}\n\n")
            .unwrap();
        assert_eq!(
            next_chunk(&mut body).await,
            "data: {\"method\":\"notifications/progress\"}\n\n"
        );
        sender.send("data: {\"id\":1}\n\n").unwrap();
        drop(sender);
        assert_eq!(next_chunk(&mut body).await, "data: {\"id\":1}\n\n");
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_failing_stream_keeps_its_bytes_and_its_error() {
        let frames = stream::iter([
            Ok(Bytes::from_static(b"id: 0\n\n")),
            Err(axum::Error::new(std::io::Error::other("session closed"))),
        ]);
        let response = coalesce(event_stream(Body::from_stream(frames)), Duration::from_secs(5)).await;

        let mut body = response.into_body().into_data_stream();
        assert_eq!(next_chunk(&mut body).await, "id: 0\n\n");
        assert!(body.next().await.unwrap().is_err());
    }
}
