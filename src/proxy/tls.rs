//! The server side of a TLS handshake, on the request path; the configs it
//! uses are built with the snapshot (`snapshot::tls`).

use std::sync::Arc;

/// Accept a TLS connection: drive the rustls handshake over the socket and
/// hand the finished session to monoio-rustls. Unlike monoio-rustls's own
/// accept, everything rustls wants to send is flushed even when the handshake
/// fails, so a client gets its alert (e.g. `no_application_protocol` in TLS
/// 1.3, where it follows the ServerHello) instead of a bare close.
pub(crate) async fn accept(
    config: Arc<rustls::ServerConfig>,
    mut tcp: monoio::net::TcpStream,
) -> std::io::Result<(
    monoio_rustls::ServerTlsStream<monoio::net::TcpStream>,
    crate::audit::TlsInfo,
)> {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use std::io::{Error, ErrorKind};
    let mut session =
        rustls::ServerConnection::new(config).map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
    let mut out = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 16 * 1024];
    let failed = loop {
        // Send what the handshake produced so far.
        while session.wants_write() {
            session.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            let (res, o) = tcp.write_all(std::mem::take(&mut out)).await;
            out = o;
            out.clear();
            res?;
        }
        if !session.is_handshaking() {
            let info = crate::audit::TlsInfo {
                version: match session.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "other",
                },
                sni: session.server_name().map(Box::from),
            };
            return Ok((monoio_rustls::ServerTlsStream::new(tcp, session), info));
        }
        let (res, b) = tcp.read(std::mem::take(&mut buf)).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "TLS handshake: client closed",
            ));
        }
        let mut input = &buf[..n];
        let mut error = None;
        while !input.is_empty() && error.is_none() {
            session.read_tls(&mut input)?;
            if let Err(e) = session.process_new_packets() {
                error = Some(e);
            }
        }
        if let Some(e) = error {
            break e;
        }
    };
    // Flush the alert rustls queued for the failure, then report it.
    while session.wants_write() {
        if session.write_tls(&mut out).is_err() {
            break;
        }
    }
    if !out.is_empty() {
        let _ = tcp.write_all(out).await;
    }
    Err(Error::new(ErrorKind::InvalidData, failed))
}
