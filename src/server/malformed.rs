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

    /// When `bytes` (all hyper asked to write) ends with a bare refusal, take it over:
    /// queue what came before it and the contract's answer in its place.
    fn took_over(&mut self, bytes: &[u8]) -> bool {
        if *self
            .http1
            .get_or_insert_with(|| bytes.starts_with(b"HTTP/1."))
        {
            if let Some((start, refusal)) = bare_refusal(bytes) {
                let answer = (self.refuse)(refusal.error());
                let mut out = bytes[..start].to_vec();
                out.extend_from_slice(&serialise(&answer, refusal.date));
                self.pending = Bytes::from(out);
                return true;
            }
        }
        false
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
        if this.took_over(buf) {
            // Written by the flush or shutdown hyper does next; hyper writes nothing more.
            return Poll::Ready(Ok(buf.len()));
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
        // A refusal is hyper's last write, and its head is one buffer: only then is it
        // worth joining the buffers to look.
        let last = bufs.iter().rev().find(|b| !b.is_empty());
        if last.is_some_and(|last| bare_refusal(last).is_some()) {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if this.took_over(&joined) {
                return Poll::Ready(Ok(joined.len()));
            }
        }
        if this.http1.is_none() {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                this.http1 = Some(first.starts_with(b"HTTP/1."));
            }
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
/// in `proto/h1/role.rs`): `HTTP/1.1 400 Bad Request`, then only `connection: close`,
/// `content-length: 0` and `date`, and no body.
#[derive(Debug, PartialEq)]
struct BareRefusal<'a> {
    status: StatusCode,
    date: &'a [u8],
}

impl BareRefusal<'_> {
    fn error(&self) -> GateError {
        match self.status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => GateError::new(
                ErrorKind::HeadTooLarge,
                "the request line and headers are larger than 64 KiB",
            ),
            StatusCode::URI_TOO_LONG => {
                GateError::new(ErrorKind::TargetTooLong, "the request target is too long")
            }
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
/// only, from a fixed distance: every answer's head passes through here.
fn bare_refusal(bytes: &[u8]) -> Option<(usize, BareRefusal<'_>)> {
    const STATUS_LINES: [(&[u8], StatusCode); 3] = [
        (b"HTTP/1.1 400 Bad Request", StatusCode::BAD_REQUEST),
        (
            b"HTTP/1.1 431 Request Header Fields Too Large",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (b"HTTP/1.1 414 URI Too Long", StatusCode::URI_TOO_LONG),
    ];
    // An HTTP date (IMF-fixdate) is always this long.
    const DATE_LENGTH: usize = "Sun, 06 Nov 1994 08:49:37 GMT".len();
    let head = bytes.strip_suffix(b"\r\n\r\n")?;
    let (before, date) = head.split_at(head.len().checked_sub(DATE_LENGTH)?);
    let before = before.strip_suffix(b"\r\ncontent-length: 0\r\ndate: ")?;
    let before = before
        .strip_suffix(b"\r\nconnection: close")
        .unwrap_or(before);
    STATUS_LINES.into_iter().find_map(|(line, status)| {
        let start = before.len().checked_sub(line.len())?;
        (&before[start..] == line).then_some((start, BareRefusal { status, date }))
    })
}

/// An answer as HTTP/1.1 bytes, closing the connection as hyper would have.
fn serialise(answer: &Response<Bytes>, date: &[u8]) -> Vec<u8> {
    let status = answer.status();
    let mut out = Vec::with_capacity(512 + answer.body().len());
    out.extend_from_slice(b"HTTP/1.1 ");
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
        let old_client = bare("HTTP/1.1 400 Bad Request").replace("connection: close\r\n", "");
        assert!(bare_refusal(old_client.as_bytes()).is_some());

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
            refusal.trim_end().to_owned(),
            refusal.replace(" GMT", ""),
            "{\"error_msg\":\"\r\n\r\n".to_owned(),
            String::new(),
        ];
        for other in others {
            assert_eq!(bare_refusal(other.as_bytes()), None, "{other:?}");
        }
    }

    #[test]
    fn the_replacement_is_a_whole_answer_that_closes_the_connection() {
        let answer = GateError::new(ErrorKind::MalformedMessage, "no").into_response("id-1");
        let bytes = String::from_utf8(serialise(&answer, DATE.as_bytes())).unwrap();
        let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: id-1\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error_code"], "SWR.GATE.4000010");
    }
}
