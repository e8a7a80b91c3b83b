//! The contract's answer, and an audit record, for a message hyper cannot read as a
//! request.
//!
//! hyper answers a malformed HTTP/1.1 head (a bad request line or header, conflicting
//! `Content-Length`s, a `Transfer-Encoding` that does not end in `chunked`) or one over
//! the size limit itself, with a bare `400`, `431` or `414` and no body, then closes the
//! connection; the service never sees the message. It has no hook for that answer, so
//! this connection wrapper recognises it on its way out and writes the contract's answer
//! in its place: the JSON error body, `X-Request-Id`, and an audit record.

use std::io;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::rt::{Read, ReadBufCursor, Write};

use crate::error::{ErrorKind, GateError};

/// A connection whose bare refusals from hyper are replaced by `refuse`'s answers.
pub struct MalformedAnswers<I, F> {
    io: I,
    refuse: F,
    /// Decided on the first write: HTTP/1 answers start with `HTTP/1.`, HTTP/2 frames
    /// never do, and only HTTP/1 has bare refusals.
    http1: Option<bool>,
    /// Bytes to write before anything else: what preceded the refusal in hyper's last
    /// write, then the answer that replaces it.
    pending: Bytes,
}

impl<I, F> MalformedAnswers<I, F>
where
    I: Write + Unpin,
    F: Fn(GateError) -> Response<Bytes> + Unpin,
{
    pub fn new(io: I, refuse: F) -> MalformedAnswers<I, F> {
        MalformedAnswers {
            io,
            refuse,
            http1: None,
            pending: Bytes::new(),
        }
    }

    /// Write out what is pending; ready once none is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.pending.split_to(written);
        }
        Poll::Ready(Ok(()))
    }

    /// When one of `bufs` (all hyper asked to write) ends with a bare refusal, take the
    /// write over: queue everything else in order, then the contract's answer in the
    /// refusal's place, and say how much of hyper's bytes that covers.
    ///
    /// The refusal is the last thing hyper sends, but not always the last buffer: under
    /// vectored writes hyper keeps heads in a buffer that goes out before the queued
    /// bodies, and a refusal written while an earlier answer's body is still queued
    /// (pipelined requests, a client slow to read) would go out ahead of that body.
    fn took_over<B: Deref<Target = [u8]>>(&mut self, bufs: &[B]) -> Option<usize> {
        let first = bufs.iter().position(|b| !b.is_empty())?;
        let last = bufs.iter().rposition(|b| !b.is_empty())?;
        if !*self
            .http1
            .get_or_insert_with(|| bufs[first].starts_with(b"HTTP/1."))
        {
            return None;
        }
        let (at, (start, refusal)) = [last, first]
            .into_iter()
            .find_map(|i| bare_refusal(&bufs[i]).map(|found| (i, found)))?;
        let answer = (self.refuse)(refusal.error());
        let mut out = Vec::new();
        for (i, buf) in bufs.iter().enumerate() {
            out.extend_from_slice(if i == at { &buf[..start] } else { buf });
        }
        out.extend_from_slice(&serialise(&answer, refusal.version, refusal.date));
        self.pending = Bytes::from(out);
        Some(bufs.iter().map(|b| b.len()).sum())
    }
}

impl<I: Read + Unpin, F: Unpin> Read for MalformedAnswers<I, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I, F> Write for MalformedAnswers<I, F>
where
    I: Write + Unpin,
    F: Fn(GateError) -> Response<Bytes> + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(taken) = this.took_over(&[buf]) {
            // Written by the flush or shutdown hyper does next; hyper writes nothing more.
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(taken) = this.took_over(bufs) {
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// hyper's answer to a message it could not read, as it writes it (hyper 1.x, `on_error`
/// in `proto/h1/role.rs`): `HTTP/1.1 400 Bad Request` (`HTTP/1.0` once the client spoke
/// it), then only `connection: close` (not for HTTP/1.0, where it is the default),
/// `content-length: 0` and `date`, and no body.
#[derive(Debug, PartialEq)]
struct BareRefusal<'a> {
    version: &'a [u8],
    status: StatusCode,
    date: &'a [u8],
}

impl BareRefusal<'_> {
    fn error(&self) -> GateError {
        match self.status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => GateError::new(
                ErrorKind::HeadTooLarge,
                "the request line and headers are larger than 64 KiB, or there are more \
                 than 100 header fields",
            ),
            // A head hyper read whole (a read can take it a little past the limit) with a
            // target over 65 534 bytes.
            StatusCode::URI_TOO_LONG => GateError::new(
                ErrorKind::TargetTooLong,
                "the request target is longer than 65 534 bytes",
            ),
            _ => GateError::new(
                ErrorKind::MalformedMessage,
                "the request is not well-formed HTTP/1.1: a malformed request line or \
                 header, an invalid or conflicting Content-Length, a Transfer-Encoding \
                 that does not end in chunked, or an obs-folded header line",
            ),
        }
    }
}

/// Where a bare refusal starts in `bytes`, when `bytes` ends with one. Looks at the end
/// only, from a fixed distance: every answer's head passes through here. A body that
/// ends with these very bytes would be taken for one too; no JSON document can.
fn bare_refusal(bytes: &[u8]) -> Option<(usize, BareRefusal<'_>)> {
    const STATUS_LINES: [(&[u8], StatusCode); 3] = [
        (b" 400 Bad Request", StatusCode::BAD_REQUEST),
        (
            b" 431 Request Header Fields Too Large",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (b" 414 URI Too Long", StatusCode::URI_TOO_LONG),
    ];
    const VERSION_LENGTH: usize = "HTTP/1.1".len();
    // An HTTP date (IMF-fixdate) is always this long.
    const DATE_LENGTH: usize = "Sun, 06 Nov 1994 08:49:37 GMT".len();
    let head = bytes.strip_suffix(b"\r\n\r\n")?;
    let (before, date) = head.split_at(head.len().checked_sub(DATE_LENGTH)?);
    let before = before.strip_suffix(b"\r\ncontent-length: 0\r\ndate: ")?;
    let before = before
        .strip_suffix(b"\r\nconnection: close")
        .unwrap_or(before);
    STATUS_LINES.into_iter().find_map(|(line, status)| {
        let start = before
            .strip_suffix(line)?
            .len()
            .checked_sub(VERSION_LENGTH)?;
        let version = &before[start..start + VERSION_LENGTH];
        matches!(version, b"HTTP/1.1" | b"HTTP/1.0").then_some((
            start,
            BareRefusal {
                version,
                status,
                date,
            },
        ))
    })
}

/// An answer as HTTP/1.x bytes, closing the connection as hyper would have.
fn serialise(answer: &Response<Bytes>, version: &[u8], date: &[u8]) -> Vec<u8> {
    let status = answer.status();
    let mut out = Vec::with_capacity(512 + answer.body().len());
    out.extend_from_slice(version);
    out.push(b' ');
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in answer.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(answer.body().len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(answer.body());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Sun, 29 Nov 2026 11:32:42 GMT";

    fn bare(status_line: &str) -> String {
        format!("{status_line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
    }

    #[test]
    fn hypers_refusals_are_recognised_at_the_end_of_a_write() {
        let alone = bare("HTTP/1.1 431 Request Header Fields Too Large");
        let (start, refusal) = bare_refusal(alone.as_bytes()).unwrap();
        assert_eq!(start, 0);
        assert_eq!(refusal.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(refusal.date, DATE.as_bytes());
        let old_client =
            format!("HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        let (_, refusal) = bare_refusal(old_client.as_bytes()).unwrap();
        assert_eq!(refusal.version, b"HTTP/1.0");

        let answer_before = "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}";
        let after = format!("{answer_before}{}", bare("HTTP/1.1 400 Bad Request"));
        let (start, refusal) = bare_refusal(after.as_bytes()).unwrap();
        assert_eq!(start, answer_before.len());
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn answers_of_the_gateway_and_of_swr_are_not_taken_for_refusals() {
        let refusal = bare("HTTP/1.1 400 Bad Request");
        let others = [
            refusal.replace("connection: close", "x-request-id: a"),
            refusal.replace("content-length: 0\r\n", ""),
            bare("HTTP/1.1 404 Not Found"),
            bare("HTTP/2.0 400 Bad Request"),
            refusal.replace("HTTP/1.1 400", "HTTP/1.1 400 400"),
            refusal.trim_end().to_owned(),
            refusal.replace(" GMT", ""),
            "{\"error_msg\":\"\r\n\r\n".to_owned(),
            String::new(),
        ];
        for other in others {
            assert_eq!(bare_refusal(other.as_bytes()), None, "{other:?}");
        }
    }

    /// What the wrapper passes on, whole.
    #[derive(Default)]
    struct Sink(Vec<u8>);

    impl Write for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_refusal_queued_ahead_of_an_earlier_body_goes_out_after_it() {
        let mut answers = MalformedAnswers::new(Sink::default(), |error: GateError| {
            error.into_response("id-2")
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let refusal = bare("HTTP/1.1 400 Bad Request");
        let head = "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n";
        let heads = format!("{head}{refusal}");
        let bufs = [io::IoSlice::new(heads.as_bytes()), io::IoSlice::new(b"{}")];
        let written = Pin::new(&mut answers).poll_write_vectored(&mut cx, &bufs);
        assert!(matches!(written, Poll::Ready(Ok(n)) if n == head.len() + refusal.len() + 2));
        assert!(Pin::new(&mut answers).poll_flush(&mut cx).is_ready());
        let sent = String::from_utf8(answers.io.0).unwrap();
        let (first, second) = sent.split_at(head.len() + 2);
        assert_eq!(first, format!("{head}{{}}"));
        assert!(
            second.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{second}"
        );
        assert!(second.contains("SWR.GATE.4000010"), "{second}");
    }

    #[test]
    fn the_replacement_is_a_whole_answer_that_closes_the_connection() {
        let answer = GateError::new(ErrorKind::MalformedMessage, "no").into_response("id-1");
        let bytes = String::from_utf8(serialise(&answer, b"HTTP/1.1", DATE.as_bytes())).unwrap();
        let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: id-1\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error_code"], "SWR.GATE.4000010");
    }
}
