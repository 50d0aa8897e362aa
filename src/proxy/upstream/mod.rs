//! The upstream side of an exchange: the request head (`head`), connecting
//! (plain or TLS, with a connect timeout, here), sending a judged request
//! (`send`), the per-core keep-alive pool (`pool`) and relaying the answer
//! (`relay`).

pub(crate) mod head;
pub(crate) mod pool;
pub(crate) mod relay;
pub(crate) mod send;

use crate::error::HttpError;
use crate::proxy::stream::UpstreamStream;
use crate::snapshot::route::Route;
use crate::snapshot::UpstreamSettings;
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

/// Open a new connection to the route's upstream, trying each resolved
/// address in turn.
pub(crate) async fn connect(
    route: &Route,
    settings: &UpstreamSettings,
) -> Result<UpstreamStream, HttpError> {
    let mut timed_out = false;
    let mut last_error = None;
    for addr in &route.upstream_addrs {
        match monoio::time::timeout(settings.connect_timeout, TcpStream::connect_addr(*addr)).await
        {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                if !route.upstream.tls {
                    return Ok(UpstreamStream::Plain(tcp));
                }
                let host = route
                    .upstream
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_string())
                    .map_err(|_| HttpError::BadGateway("invalid upstream TLS name"))?;
                let connector = monoio_rustls::TlsConnector::from(settings.tls.clone());
                return match monoio::time::timeout(
                    settings.connect_timeout,
                    connector.connect(name, tcp),
                )
                .await
                {
                    Ok(Ok(tls)) => Ok(UpstreamStream::Tls(Box::new(tls))),
                    Ok(Err(e)) => {
                        tracing::warn!(route = %route.name, error = %e, "upstream TLS handshake failed");
                        Err(HttpError::BadGateway("upstream TLS handshake failed"))
                    }
                    Err(_) => Err(HttpError::GatewayTimeout),
                };
            }
            Ok(Err(e)) => {
                tracing::debug!(route = %route.name, %addr, error = %e, "upstream connect failed");
                last_error = Some(e);
            }
            Err(_) => timed_out = true,
        }
    }
    Err(match last_error {
        _ if timed_out => HttpError::GatewayTimeout,
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            HttpError::BadGateway("upstream connection refused")
        }
        Some(e) => {
            // Not the upstream's doing (e.g. out of file descriptors): say so.
            tracing::warn!(route = %route.name, error = %e, "cannot connect to the upstream");
            HttpError::BadGateway("cannot connect to the upstream")
        }
        None => HttpError::BadGateway("upstream connection refused"),
    })
}
