//! A client's TCP connection that can be closed with a reset.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The client's socket, closed with a reset (RST) once the gateway has given up on the
/// client. A plain close queues a FIN behind the answers not yet sent, and the kernel
/// keeps those, and the connection, for as long as a client that does not read keeps its
/// window shut; a reset frees them at once and tells the client.
pub struct ClientSocket {
    stream: TcpStream,
    give_up: Arc<AtomicBool>,
}

/// Set before the connection is dropped to close it with a reset.
#[derive(Clone)]
pub struct GiveUp(Arc<AtomicBool>);

impl GiveUp {
    pub fn now(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl ClientSocket {
    pub fn new(stream: TcpStream) -> (ClientSocket, GiveUp) {
        let give_up = Arc::new(AtomicBool::new(false));
        let socket = ClientSocket {
            stream,
            give_up: give_up.clone(),
        };
        (socket, GiveUp(give_up))
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if self.give_up.load(Ordering::Acquire) {
            // A zero linger makes close(2) send the reset; it never blocks.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
