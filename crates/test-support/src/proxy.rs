//! A TCP proxy for fault tests.

/// A loopback TCP proxy in front of a server (PostgreSQL, RabbitMQ) whose connections a test can
/// cut, as if the server went away, or freeze, as if the network dropped their packets.
pub struct Proxy {
    /// The loopback port the proxy accepts on.
    pub port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    freeze: std::sync::Arc<tokio::sync::Notify>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding every connection accepted on a loopback port to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = std::sync::Arc::clone(&connections);
        let freeze = std::sync::Arc::new(tokio::sync::Notify::new());
        let frozen = std::sync::Arc::clone(&freeze);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let frozen = std::sync::Arc::clone(&frozen);
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = frozen.notified() => {
                                // Black-holed: nothing is forwarded any more, and nothing is
                                // closed either, as when a network drops packets.
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
                registry.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            connections,
            freeze,
            accept,
        }
    }

    /// Stops forwarding on every open connection without closing it; new connections are
    /// forwarded as before.
    pub fn freeze(&self) {
        self.freeze.notify_waiters();
    }

    /// How many connections the proxy has accepted since it started or was last cut.
    pub fn accepted(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Drops every proxied connection; new ones are accepted again.
    pub fn cut(&self) -> usize {
        let handles: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        for handle in &handles {
            handle.abort();
        }
        handles.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
