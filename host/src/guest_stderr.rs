//! A guest's stderr: written through to the host's own, with its tail kept
//! so that a failed call can be answered with what the guest said last. A Rust
//! guest that panics prints why to stderr and then aborts, and the trap
//! alone says only "`unreachable` instruction executed".

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// How much of the end of a guest's stderr is kept.
const TAIL: usize = 4096;
/// The most of it a failure message quotes.
const QUOTED: usize = 512;

/// One instance's stderr. Clones share the tail.
#[derive(Clone, Default)]
pub struct GuestStderr {
    tail: Arc<Mutex<VecDeque<u8>>>,
}

impl GuestStderr {
    /// Keeps `bytes` in the tail and writes them to the host's stderr.
    fn write_through(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.keep(bytes);
        std::io::stderr().write_all(bytes)
    }

    fn keep(&self, bytes: &[u8]) {
        let mut tail = self.tail.lock().unwrap();
        let kept = &bytes[bytes.len().saturating_sub(TAIL)..];
        let over = (tail.len() + kept.len()).saturating_sub(TAIL);
        tail.drain(..over);
        tail.extend(kept);
    }

    /// What the guest said last: a Rust panic's location and message if it
    /// panicked, else its last non-empty line. `None` if it wrote nothing.
    pub fn last_words(&self) -> Option<String> {
        let text = {
            let mut tail = self.tail.lock().unwrap();
            String::from_utf8_lossy(tail.make_contiguous()).into_owned()
        };
        last_words(&text)
    }
}

fn last_words(text: &str) -> Option<String> {
    let said = match text.rfind("panicked at ") {
        // "thread '<unnamed>' (1) panicked at src/lib.rs:68:21:\nprobe panic\nnote: run with…"
        Some(at) => text[at..]
            .lines()
            .take_while(|line| !line.starts_with("note: "))
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        None => text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())?
            .trim()
            .to_owned(),
    };
    Some(match said.char_indices().nth(QUOTED) {
        Some((cut, _)) => format!("{}…", &said[..cut]),
        None => said,
    })
}

// Not a terminal: what it writes may be quoted in an HTTP answer.
impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_through(&bytes)
            .map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_through(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_panic_is_quoted_by_its_location_and_message() {
        let err = GuestStderr::default();
        err.keep(b"loading the model\n");
        err.keep(b"thread '<unnamed>' (1) panicked at src/lib.rs:68:21:\nprobe panic\n");
        err.keep(
            b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        );
        assert_eq!(
            err.last_words().as_deref(),
            Some("panicked at src/lib.rs:68:21: probe panic")
        );
    }

    /// Both of WASI's ways to stderr (p2's `output-stream` and p3's `stream`)
    /// keep into the one tail. They also write through: two short lines here.
    #[tokio::test]
    async fn p2_and_p3_writes_share_the_tail() {
        use tokio::io::AsyncWriteExt;
        let err = GuestStderr::default();
        let mut p2 = err.p2_stream();
        p2.write(Bytes::from_static(b"guest_stderr test: by p2\n"))
            .unwrap();
        assert_eq!(
            err.last_words().as_deref(),
            Some("guest_stderr test: by p2")
        );
        let mut p3 = Pin::from(err.async_stream());
        p3.write_all(b"guest_stderr test: by p3\n").await.unwrap();
        assert_eq!(
            err.last_words().as_deref(),
            Some("guest_stderr test: by p3")
        );
    }

    #[test]
    fn otherwise_the_last_line_said_and_only_the_tail_is_kept() {
        let err = GuestStderr::default();
        assert_eq!(err.last_words(), None);
        err.keep(&vec![b'x'; 3 * TAIL]);
        err.keep(b"\nabort: out of tensors\n\n");
        assert_eq!(err.tail.lock().unwrap().len(), TAIL);
        assert_eq!(err.last_words().as_deref(), Some("abort: out of tensors"));
        err.keep(&vec![b'y'; 2 * QUOTED]);
        let said = err.last_words().unwrap();
        assert_eq!(said.chars().count(), QUOTED + 1, "cut, with an ellipsis");
    }
}
