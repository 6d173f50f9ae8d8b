//! Reading a request body whole.
//!
//! spin-sdk's `bytes()` reads the body stream in 16 KiB frames and joins
//! them at the end: a 600 KB tensor is ~40 calls into the host and one more
//! copy in the sandbox. Here the buffer is sized from `Content-Length` up
//! front and filled in place, so the body is usually one read.

use spin_sdk::http::{HeaderMap, IncomingMessage as _, Request};
use spin_sdk::wasip3::wit_bindgen::StreamResult;
use spin_sdk::wasip3::wit_future;

use crate::KitError;

/// The most a `Content-Length` may reserve before any byte has arrived; a
/// body that is longer still grows as it comes (the host caps its size).
const MAX_RESERVE: usize = 64 << 20;
/// The least a read asks for when the length is unknown or exceeded.
const MIN_READ: usize = 64 << 10;

/// The body's length as its `Content-Length` declares it, if it does.
pub fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// Reads `req`'s whole body into one buffer.
pub async fn read_all(req: Request) -> Result<Vec<u8>, KitError> {
    let declared = declared_length(req.headers());
    let failed = |e| KitError::bad_request(format!("reading the body: {e:?}"));
    let Some(message) = req.into_body().take_unstarted() else {
        // `into_body` always returns an unstarted body.
        return Err(KitError::internal("the request body was already read"));
    };
    // Dropped once the body is read: that tells the host it was taken whole.
    let (_done, done_reader) = wit_future::new(|| Ok(()));
    let (mut stream, trailers) = message.consume_body(done_reader);
    // One byte over the declared length, for the read that finds the end
    // without growing (and copying) the buffer.
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(MAX_RESERVE) + 1);
    loop {
        if body.len() == body.capacity() {
            body.reserve(body.len().max(MIN_READ));
        }
        let (status, filled) = stream.read(body).await;
        body = filled;
        match status {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped => break,
            StreamResult::Cancelled => {
                return Err(KitError::internal("the body read was cancelled"));
            }
        }
    }
    // The stream ends cleanly or with the reason it was cut (e.g. the client
    // left), which the trailers' future says. A body of its declared length
    // is whole whatever it says, and not waiting for it saves a round trip
    // through the host's event loop (17 µs of a 200 µs digits call on a
    // first-generation Zen; tests/bench/RESULTS.md).
    if declared != Some(body.len()) {
        trailers.await.map_err(failed)?;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(length: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", length.parse().unwrap());
        headers
    }

    #[test]
    fn declared_length_is_read_from_the_head() {
        assert_eq!(declared_length(&with("3136")), Some(3136));
        assert_eq!(declared_length(&with(" 7 ")), Some(7));
        // Not a length: the body is read to its end instead.
        assert_eq!(declared_length(&with("-1")), None);
        assert_eq!(declared_length(&with("12a")), None);
        assert_eq!(declared_length(&HeaderMap::new()), None);
    }
}
