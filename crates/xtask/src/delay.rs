//! `xtask delay`: a TCP forwarder that holds every byte for a fixed time in each direction, so
//! that a benchmark on one machine sees the round trips of a server on another host (a
//! database in the next rack or availability zone: 0.2 to 1 ms).
//!
//! Each direction of a connection is a reader thread that stamps what it reads with the time it
//! is due and a writer thread that sleeps until then and writes it: bytes keep their order, and
//! a message is delayed once, however it is split into reads. Threads, not the async runtime,
//! because its timer counts whole milliseconds.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Forwards the connections accepted on `listen` to `upstream`, each direction delayed by
/// `delay`, until the process is stopped.
pub fn run(listen: SocketAddr, upstream: SocketAddr, delay: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "xtask delay: forwarding {} to {upstream}, {} us each way",
        listener.local_addr()?,
        delay.as_micros()
    );
    for inbound in listener.incoming() {
        let inbound = inbound.context("accepting a connection")?;
        let outbound = match TcpStream::connect(upstream) {
            Ok(outbound) => outbound,
            Err(err) => {
                eprintln!("xtask delay: connecting to {upstream}: {err}");
                continue;
            }
        };
        for stream in [&inbound, &outbound] {
            stream.set_nodelay(true)?;
        }
        forward(inbound.try_clone()?, outbound.try_clone()?, delay);
        forward(outbound, inbound, delay);
    }
    Ok(())
}

/// Copies `from` to `to`, each read written `delay` after it was read; closes `to`'s sending
/// side when `from` ends.
fn forward(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (due, arrivals) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer) {
            if due
                .send((Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (at, bytes) in arrivals {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
