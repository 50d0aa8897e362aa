//! The bare relay of the load test (issue 15): the physical limit of
//! portcullis's design on a machine. One thread, monoio on io_uring with the
//! ring options portcullis uses (coop_taskrun, single_issuer,
//! defer_taskrun); each client connection gets its own upstream connection
//! and two tasks copy bytes both ways (read up to 16 KiB, write it all on).
//! No HTTP, no parsing, no pooling: the kernel work of a proxy and nothing
//! on top. `loadtest/run` starts it beside the proxies.
//!
//! ```text
//! relay LISTEN_ADDR UPSTREAM_ADDR
//! ```

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = &args[..] else {
        eprintln!("usage: relay LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream: std::net::SocketAddr = upstream.parse().expect("UPSTREAM_ADDR");
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(ring)
        .build()
        .expect("an io_uring runtime (the bare relay has no epoll fallback)");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen.as_str()).expect("LISTEN_ADDR");
        println!("relay listening on {listen}, to {upstream}");
        while let Ok((client, _)) = listener.accept().await {
            monoio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_r, client_w) = client.into_split();
                let (server_r, server_w) = server.into_split();
                monoio::spawn(copy(server_r, client_w));
                copy(client_r, server_w).await;
            });
        }
    });
}

/// Read up to 16 KiB, write it all on, until EOF or an error; then shut
/// the other side's writing down (so its peer sees the end too).
async fn copy(mut from: impl AsyncReadRent, mut to: impl AsyncWriteRent) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let (res, b) = from.read(buf).await;
        if !matches!(res, Ok(n) if n > 0) {
            break;
        }
        let (res, b) = to.write_all(b).await;
        if res.is_err() {
            break;
        }
        buf = b;
        buf.clear();
    }
    let _ = to.shutdown().await;
}
