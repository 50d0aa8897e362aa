//! The two kinds of byte stream portcullis speaks over, plain TCP or TLS, as
//! one concrete type per side so the request path is not generic over them.

use crate::audit::TlsInfo;
use crate::proxy::idle::IdleSlot;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Canceller};
use monoio::net::TcpStream;
use monoio::BufResult;

macro_rules! either_stream {
    ($(#[$doc:meta])* $name:ident, $tls:ty) => {
        $(#[$doc])*
        pub(crate) enum $name {
            Plain(TcpStream),
            Tls(Box<$tls>),
        }

        impl AsyncReadRent for $name {
            async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
                match self {
                    Self::Plain(s) => s.read(buf).await,
                    // Boxed: a TLS operation's state is large, and every
                    // future awaiting this stream would carry it.
                    Self::Tls(s) => Box::pin(s.read(buf)).await,
                }
            }

            async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
                match self {
                    Self::Plain(s) => s.readv(buf).await,
                    // Boxed: a TLS operation's state is large, and every
                    // future awaiting this stream would carry it.
                    Self::Tls(s) => Box::pin(s.readv(buf)).await,
                }
            }
        }

        impl AsyncWriteRent for $name {
            async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
                match self {
                    Self::Plain(s) => s.write(buf).await,
                    // Boxed: a TLS operation's state is large, and every
                    // future awaiting this stream would carry it.
                    Self::Tls(s) => Box::pin(s.write(buf)).await,
                }
            }

            async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
                match self {
                    Self::Plain(s) => s.writev(buf).await,
                    // Boxed: a TLS operation's state is large, and every
                    // future awaiting this stream would carry it.
                    Self::Tls(s) => Box::pin(s.writev(buf)).await,
                }
            }

            async fn flush(&mut self) -> std::io::Result<()> {
                match self {
                    Self::Plain(s) => s.flush().await,
                    Self::Tls(s) => s.flush().await,
                }
            }

            async fn shutdown(&mut self) -> std::io::Result<()> {
                match self {
                    Self::Plain(s) => s.shutdown().await,
                    Self::Tls(s) => s.shutdown().await,
                }
            }
        }
    };
}

either_stream!(
    /// A client connection's transport, as accepted on a listener.
    ClientIo,
    monoio_rustls::ServerTlsStream<TcpStream>
);
either_stream!(
    /// A connection to an upstream.
    UpstreamStream,
    monoio_rustls::ClientTlsStream<TcpStream>
);

/// A client connection: its transport, what its TLS handshake settled, and
/// how many bytes were read from and written to it (application bytes, after
/// TLS), for the audit record.
pub struct ClientStream {
    io: ClientIo,
    tls: Option<TlsInfo>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl ClientStream {
    pub fn plain(tcp: TcpStream) -> ClientStream {
        ClientStream::new(ClientIo::Plain(tcp), None)
    }

    pub fn tls(stream: monoio_rustls::ServerTlsStream<TcpStream>, info: TlsInfo) -> ClientStream {
        ClientStream::new(ClientIo::Tls(Box::new(stream)), Some(info))
    }

    fn new(io: ClientIo, tls: Option<TlsInfo>) -> ClientStream {
        ClientStream {
            io,
            tls,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.io, ClientIo::Tls(_))
    }

    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The TCP socket of a plain connection (a TLS one's is hidden in its
    /// TLS stream).
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match &self.io {
            ClientIo::Plain(tcp) => Some(tcp),
            ClientIo::Tls(_) => None,
        }
    }
}

fn count<T>(total: &mut u64, r: BufResult<usize, T>) -> BufResult<usize, T> {
    if let Ok(n) = r.0 {
        *total += n as u64;
    }
    r
}

impl AsyncReadRent for ClientStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        count(&mut self.bytes_in, self.io.read(buf).await)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        count(&mut self.bytes_in, self.io.readv(buf).await)
    }
}

impl AsyncWriteRent for ClientStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        count(&mut self.bytes_out, self.io.write(buf).await)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        count(&mut self.bytes_out, self.io.writev(buf).await)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}

/// Read more bytes into the spare capacity of `buf` (growing it when full, up
/// to `max`). Returns the number of bytes read; 0 means end of stream.
pub(crate) async fn read_more<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    if buf.len() == buf.capacity() {
        let room = buf
            .capacity()
            .max(4096)
            .min(max.saturating_sub(buf.len()).max(1));
        buf.reserve(room);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let owned = std::mem::take(buf);
    let (res, slice) = s.read(owned.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

/// How long a connection waiting for its next request keeps its read
/// buffer in a read: past it the read is cancelled, the buffer freed, and
/// the wait goes on for readability alone (a plain connection; TLS keeps its
/// read). Busy keep-alive connections, whose next request comes sooner,
/// pay nothing for it. Kept by the worker's coarse clock: 100 to 200 ms.
pub(crate) const IDLE_HOLD: std::time::Duration = crate::proxy::idle::TICK;

/// What a wait for the client's next bytes came to.
pub(crate) enum Held {
    /// Read into the buffer (`Ok(0)`: closed), failed or timed out.
    Read(std::io::Result<usize>),
    /// Nothing came within [`IDLE_HOLD`]: the read was cancelled and the
    /// buffer freed; wait up to this long more with [`read_after_idle`].
    LetGo(std::time::Duration),
}

/// Wait up to `wait` (to within a tick of the worker's clock, whose entry
/// for this connection is `slot`) for the client's next bytes, read into
/// `buf` (empty). A plain connection lets its read go after [`IDLE_HOLD`].
pub(crate) async fn read_held(
    client: &mut ClientStream,
    buf: &mut Vec<u8>,
    max: usize,
    wait: std::time::Duration,
    slot: &IdleSlot,
    canceller: &mut Option<Canceller>,
) -> Held {
    use monoio::io::CancelableAsyncReadRent;
    let tcp = match &mut client.io {
        ClientIo::Plain(tcp) if wait > IDLE_HOLD => tcp,
        _ => {
            let got = slot.within(wait, read_more(client, buf, max)).await;
            return Held::Read(got.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())));
        }
    };
    buf.reserve(4096.min(max));
    let handle = canceller.get_or_insert_with(Canceller::new).handle();
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let mut read = std::pin::pin!(tcp.cancelable_read(owned.slice_mut(len..cap), handle));
    // A read completing as it is cancelled still returns its bytes.
    let (res, slice) = match slot.within(IDLE_HOLD, &mut read).await {
        Ok(done) => done,
        Err(_) => {
            if let Some(c) = canceller.take() {
                let _ = c.cancel();
            }
            read.await
        }
    };
    match res {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECANCELED | libc::EINTR)) => {
            Held::LetGo(wait - IDLE_HOLD)
        }
        res => {
            *buf = slice.into_inner();
            Held::Read(count(&mut client.bytes_in, (res, ())).0)
        }
    }
}

/// After [`read_held`] let its read go: wait up to `left` for readability
/// without a buffer, then read into `buf`. `Ok(0)`: closed; `Err`: failed
/// or timed out.
pub(crate) async fn read_after_idle(
    client: &mut ClientStream,
    buf: &mut Vec<u8>,
    max: usize,
    left: std::time::Duration,
    slot: &IdleSlot,
) -> std::io::Result<usize> {
    if let ClientIo::Plain(tcp) = &mut client.io {
        match slot.within(left, tcp.readable(false)).await {
            Ok(ready) => ready?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    read_more(client, buf, max).await
}

/// Write all of `data` (taken from `buf`, which is given back cleared).
pub(crate) async fn write_all<S: AsyncWriteRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    use monoio::io::AsyncWriteRentExt;
    let owned = std::mem::take(buf);
    let (res, mut owned) = s.write_all(owned).await;
    owned.clear();
    *buf = owned;
    res.map(|_| ())
}
