//! The contract's answer, and an audit record, for a message hyper cannot read as a
//! request.
//!
//! hyper answers a malformed HTTP/1.1 head (a bad request line or header, conflicting
//! `Content-Length`s, a `Transfer-Encoding` that does not end in `chunked`) or one over
//! the size limit itself, with a bare `400`, `431` or `414` and no body, then closes the
//! connection; the service never sees the message. It has no hook for that answer, so
//! this connection wrapper holds back a write that ends like one, and the server decides
//! once hyper is done: hyper ending on a parse error means it was the refusal, and the
//! contract's answer (the JSON error body, `X-Request-Id`, an audit record) goes in its
//! place. Anything else hyper does first (another write, a read) shows the bytes were an
//! answer's own, and they go out as they were: SWR's answers pass through unparsed, and
//! one may end with these very bytes.

use std::io;
use std::ops::{Deref, Range};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::sync::oneshot;

use crate::error::{ErrorKind, GateError};

/// A connection whose bare refusals from hyper are held back for the server to replace.
pub struct MalformedAnswers<I> {
    /// Taken only when the wrapper is dropped holding a write: see [`Handback`].
    io: Option<I>,
    /// Decided on the first write: HTTP/1 answers start with `HTTP/1.`, HTTP/2 frames
    /// never do, and only HTTP/1 has bare refusals.
    http1: Option<bool>,
    /// Bytes to write before anything else: a held write found to be no refusal.
    pending: Bytes,
    held: Option<Held>,
    handback: Option<oneshot::Sender<Handback<I>>>,
}

/// What the wrapper leaves the server when hyper is done with a write still held.
pub struct Handback<I> {
    pub io: I,
    pub held: Held,
}

/// A write hyper made that ends like a bare refusal: all its bytes, in hyper's order.
pub struct Held {
    bytes: Bytes,
    refusal: Range<usize>,
    version: Range<usize>,
    date: Range<usize>,
    status: StatusCode,
}

impl<I: Write + Unpin> MalformedAnswers<I> {
    pub fn new(io: I, handback: oneshot::Sender<Handback<I>>) -> MalformedAnswers<I> {
        MalformedAnswers {
            io: Some(io),
            http1: None,
            pending: Bytes::new(),
            held: None,
            handback: Some(handback),
        }
    }

    /// Write out what is pending; ready once none is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        poll_write_all(present(&mut self.io)?, cx, &mut self.pending)
    }

    /// hyper went on after a held write (it wrote or read again), which it never does
    /// after a refusal: the bytes were an answer's, and go out first, as they were.
    fn release(&mut self) {
        if let Some(held) = self.held.take() {
            // Nothing is held while anything is pending: writes hold only once it is out.
            self.pending = held.bytes;
        }
    }

    /// When the first of `bufs` (all hyper asked to write) ends like a bare refusal, hold
    /// the whole write back and say it is written.
    ///
    /// hyper writes every head, a refusal too, into one buffer that goes out ahead of the
    /// bodies it has queued (unvectored, everything is in that one buffer): a refusal
    /// ends the first buffer, though an earlier answer's body may still be queued behind
    /// it (pipelined requests, a client slow to read).
    fn hold<B: Deref<Target = [u8]>>(&mut self, bufs: &[B]) -> Option<usize> {
        let first = bufs.iter().position(|b| !b.is_empty())?;
        if !*self
            .http1
            .get_or_insert_with(|| bufs[first].starts_with(b"HTTP/1."))
        {
            return None;
        }
        let refusal = bare_refusal(&bufs[first])?;
        let offset: usize = bufs[..first].iter().map(|b| b.len()).sum();
        let shift = |range: Range<usize>| range.start + offset..range.end + offset;
        let mut bytes = BytesMut::with_capacity(bufs.iter().map(|b| b.len()).sum());
        for buf in bufs {
            bytes.extend_from_slice(buf);
        }
        let taken = bytes.len();
        self.held = Some(Held {
            bytes: bytes.freeze(),
            refusal: shift(refusal.at),
            version: shift(refusal.version),
            date: shift(refusal.date),
            status: refusal.status,
        });
        Some(taken)
    }
}

/// The connection. It is an `Option` only so that `Drop` can move it out; while the
/// wrapper is in use it is always there.
fn present<I: Unpin>(io: &mut Option<I>) -> io::Result<Pin<&mut I>> {
    io.as_mut()
        .map(Pin::new)
        .ok_or_else(|| io::ErrorKind::NotConnected.into())
}

impl<I> Drop for MalformedAnswers<I> {
    fn drop(&mut self) {
        if let (Some(held), Some(io), Some(handback)) =
            (self.held.take(), self.io.take(), self.handback.take())
        {
            let _ = handback.send(Handback { io, held });
        }
    }
}

impl<I: Read + Write + Unpin> Read for MalformedAnswers<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.release();
        ready!(this.poll_pending(cx))?;
        present(&mut this.io)?.poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for MalformedAnswers<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.release();
        ready!(this.poll_pending(cx))?;
        if let Some(taken) = this.hold(&[buf]) {
            return Poll::Ready(Ok(taken));
        }
        present(&mut this.io)?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.release();
        ready!(this.poll_pending(cx))?;
        if let Some(taken) = this.hold(bufs) {
            return Poll::Ready(Ok(taken));
        }
        present(&mut this.io)?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(I::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        present(&mut self.io)?.poll_flush(cx)
    }

    /// Held bytes are the server's to send and close after: see [`finish`].
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        if self.held.is_some() {
            return Poll::Ready(Ok(()));
        }
        present(&mut self.io)?.poll_shutdown(cx)
    }
}

/// Whether hyper ended a connection on a message it answered with a refusal: a parse
/// error, but for an HTTP/2 preface on an HTTP/1.1 connection, which it answers with
/// nothing.
pub fn ended_on_refusal(result: &Result<(), Box<dyn std::error::Error + Send + Sync>>) -> bool {
    result
        .as_ref()
        .err()
        .and_then(|error| error.downcast_ref::<hyper::Error>())
        .is_some_and(|error| error.is_parse() && !error.is_parse_version_h2())
}

impl Held {
    pub fn error(&self) -> GateError {
        match self.status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => GateError::new(
                ErrorKind::HeadTooLarge,
                "the request line and headers are larger than 64 KiB, there are more than \
                 100 header fields, or the Content-Length is too large to count",
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

    /// The held bytes with the refusal taken out and `answer` after everything else.
    fn replaced(&self, answer: &Response<Bytes>) -> Vec<u8> {
        let bytes = &self.bytes;
        let mut out = Vec::with_capacity(bytes.len() + 512 + answer.body().len());
        out.extend_from_slice(&bytes[..self.refusal.start]);
        out.extend_from_slice(&bytes[self.refusal.end..]);
        out.extend_from_slice(&serialise(
            answer,
            &bytes[self.version.clone()],
            &bytes[self.date.clone()],
        ));
        out
    }
}

/// Finish a connection hyper left with a write held: send it, with `answer` in place of
/// the refusal when hyper ended on one ([`ended_on_refusal`]), then close.
pub async fn finish<I: Write + Unpin>(
    mut io: I,
    held: Held,
    answer: Option<Response<Bytes>>,
) -> io::Result<()> {
    let mut bytes = match answer {
        Some(answer) => Bytes::from(held.replaced(&answer)),
        None => held.bytes,
    };
    std::future::poll_fn(|cx| poll_write_all(Pin::new(&mut io), cx, &mut bytes)).await?;
    std::future::poll_fn(|cx| Pin::new(&mut io).poll_flush(cx)).await?;
    std::future::poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await
}

/// Write all of `bytes`, taking off the front what is written.
fn poll_write_all<I: Write>(
    mut io: Pin<&mut I>,
    cx: &mut Context<'_>,
    bytes: &mut Bytes,
) -> Poll<io::Result<()>> {
    while !bytes.is_empty() {
        let written = ready!(io.as_mut().poll_write(cx, bytes))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let _ = bytes.split_to(written);
    }
    Poll::Ready(Ok(()))
}

/// hyper's answer to a message it could not read, as it writes it (hyper 1.x, `on_error`
/// in `proto/h1/role.rs`): `HTTP/1.1 400 Bad Request` (`HTTP/1.0` once the client spoke
/// it), then only `connection: close` (not for HTTP/1.0, where it is the default),
/// `content-length: 0` and `date`, and no body. Ranges are of the bytes looked at.
#[derive(Debug, PartialEq)]
struct BareRefusal {
    at: Range<usize>,
    version: Range<usize>,
    date: Range<usize>,
    status: StatusCode,
}

/// The bare refusal `bytes` end with, if they do. Looks at the end only, from a fixed
/// distance: every answer's head passes through here.
fn bare_refusal(bytes: &[u8]) -> Option<BareRefusal> {
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
    let date_start = head.len().checked_sub(DATE_LENGTH)?;
    let before = head[..date_start].strip_suffix(b"\r\ncontent-length: 0\r\ndate: ")?;
    let before = before
        .strip_suffix(b"\r\nconnection: close")
        .unwrap_or(before);
    STATUS_LINES.into_iter().find_map(|(line, status)| {
        let start = before
            .strip_suffix(line)?
            .len()
            .checked_sub(VERSION_LENGTH)?;
        let version = start..start + VERSION_LENGTH;
        matches!(&bytes[version.clone()], b"HTTP/1.1" | b"HTTP/1.0").then_some(BareRefusal {
            at: start..bytes.len(),
            version,
            date: date_start..head.len(),
            status,
        })
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
        let refusal = bare_refusal(alone.as_bytes()).unwrap();
        assert_eq!(refusal.at, 0..alone.len());
        assert_eq!(refusal.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(&alone[refusal.date], DATE);
        let old_client =
            format!("HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        let refusal = bare_refusal(old_client.as_bytes()).unwrap();
        assert_eq!(&old_client[refusal.version], "HTTP/1.0");

        let answer_before = "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}";
        let after = format!("{answer_before}{}", bare("HTTP/1.1 400 Bad Request"));
        let refusal = bare_refusal(after.as_bytes()).unwrap();
        assert_eq!(refusal.at, answer_before.len()..after.len());
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

    /// What the wrapper passes on, whole; a client that has sent everything.
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

    impl Read for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const ANSWER: &str = "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n";

    /// `writes` (each the buffers of one vectored write) through a wrapper as hyper
    /// makes them, each flushed.
    fn through(writes: &[&[&str]]) -> (MalformedAnswers<Sink>, oneshot::Receiver<Handback<Sink>>) {
        let (handback, handed_back) = oneshot::channel();
        let mut answers = MalformedAnswers::new(Sink::default(), handback);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for bufs in writes {
            let slices: Vec<_> = bufs
                .iter()
                .map(|b| io::IoSlice::new(b.as_bytes()))
                .collect();
            let written = Pin::new(&mut answers).poll_write_vectored(&mut cx, &slices);
            let total = bufs.iter().map(|b| b.len()).sum::<usize>();
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == total));
            assert!(Pin::new(&mut answers).poll_flush(&mut cx).is_ready());
        }
        (answers, handed_back)
    }

    /// What the client gets once the server has finished a write handed back: with the
    /// contract's answer in place of the refusal when hyper `refused`.
    fn finished(handed_back: oneshot::Receiver<Handback<Sink>>, refused: bool) -> String {
        let Handback { mut io, held } = handed_back.blocking_recv().unwrap();
        let answer = refused.then(|| held.error().into_response("id-2"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(finish(&mut io, held, answer)).unwrap();
        String::from_utf8(io.0).unwrap()
    }

    #[test]
    fn a_refusal_queued_ahead_of_an_earlier_body_goes_out_after_it() {
        let refusal = bare("HTTP/1.1 400 Bad Request");
        let (answers, handed_back) = through(&[&[&format!("{ANSWER}{refusal}"), "{}"]]);
        assert!(answers.io.as_ref().unwrap().0.is_empty(), "held back");
        drop(answers);
        let sent = finished(handed_back, true);
        let (first, second) = sent.split_at(ANSWER.len() + 2);
        assert_eq!(first, format!("{ANSWER}{{}}"));
        assert!(
            second.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{second}"
        );
        assert!(second.contains("SWR.GATE.4000010"), "{second}");
    }

    /// An answer from SWR may end with a refusal's very bytes, and a write can begin with
    /// the rest of a body (a streamed part, or what a short write left): once hyper goes
    /// on, by reading, writing, or ending without a parse error, they go out as they were.
    #[test]
    fn an_answer_that_ends_like_a_refusal_goes_out_unchanged() {
        let body = format!("text{}", bare("HTTP/1.1 400 Bad Request"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut place = [std::mem::MaybeUninit::new(0); 8];

        let (mut answers, _) = through(&[&[ANSWER], &[&body]]);
        let mut read = hyper::rt::ReadBuf::uninit(&mut place);
        assert!(Pin::new(&mut answers)
            .poll_read(&mut cx, read.unfilled())
            .is_ready());
        assert_eq!(
            answers.io.as_ref().unwrap().0,
            format!("{ANSWER}{body}").as_bytes()
        );

        let (mut answers, _) = through(&[&[ANSWER], &[&body]]);
        let written = Pin::new(&mut answers).poll_write(&mut cx, b"more");
        assert!(matches!(written, Poll::Ready(Ok(4))));
        assert_eq!(
            answers.io.as_ref().unwrap().0,
            format!("{ANSWER}{body}more").as_bytes()
        );

        let (answers, handed_back) = through(&[&[ANSWER], &[&body]]);
        drop(answers);
        assert_eq!(finished(handed_back, false), format!("{ANSWER}{body}"));
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
