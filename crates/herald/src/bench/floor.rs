//! `herald bench floor`: what the kernel charges for one write per delivery, with no server.
//!
//! One thread writes a frame the size of a rooms delivery to each of N loopback sockets in
//! turn, one `write` per frame, the way a hub writes one event to one subscriber; the bench's
//! runtime reads them on the other threads, like the load generator reads a hub's deliveries.
//! The figure is the writing thread's CPU time per write (`/proc/thread-self/schedstat`, in
//! nanoseconds), which on loopback includes the receiver's TCP input and its wake-up: the
//! kernel runs them in the sender's context. No server does better with one write per
//! delivery on this machine, so a hub's events per CPU-second are best read against it
//! (docs/benchmarks.md).

use super::Outcome;
use anyhow::Context;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The envelope of a v2 rooms delivery past its `data` (WebSocket header, `[n,offset,time,`
/// and the closing bytes): with `--size 100`, a 152-byte frame as `bench rooms` receives.
const ENVELOPE: usize = 52;

/// Rounds the writer may run ahead of the readers (each round: one frame to every socket).
const ROUNDS_AHEAD: u64 = 2;

/// What the readers have received, in frames, and a condition the writer waits on.
struct Received {
    /// Frames read by all readers.
    frames: AtomicU64,
    /// Set when the readers finish a round; the writer waits on `turn`.
    rounds: Mutex<u64>,
    /// Wakes the writer when a round is complete.
    turn: Condvar,
}

/// Opens `clients` loopback connections, writes `events` frames round-robin over them from one
/// thread (pinned to `cpu` when given) and reports that thread's CPU per write.
pub async fn floor(
    clients: usize,
    events: u64,
    size: usize,
    cpu: Option<usize>,
    deadline: Duration,
) -> anyhow::Result<Outcome> {
    let frame_len = size + ENVELOPE;
    let rounds = events.div_ceil(clients as u64).max(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Received {
        frames: AtomicU64::new(0),
        rounds: Mutex::new(0),
        turn: Condvar::new(),
    });
    let mut writers = Vec::with_capacity(clients);
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let stream = tokio::net::TcpStream::connect(addr).await.context("connecting")?;
        let (accepted, _) = listener.accept().context("accepting")?;
        accepted.set_nodelay(true)?;
        writers.push(accepted);
        let received = received.clone();
        let want = rounds * frame_len as u64;
        let per_round = clients as u64;
        readers.spawn(async move {
            let mut stream = stream;
            let mut buf = vec![0u8; 16 * 1024];
            let (mut got, mut frames) = (0u64, 0u64);
            while got < want {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    anyhow::bail!("the writer closed after {got} of {want} bytes");
                }
                got += n as u64;
                let whole = got / frame_len as u64;
                for _ in frames..whole {
                    let all = received.frames.fetch_add(1, Ordering::AcqRel) + 1;
                    if all.is_multiple_of(per_round) {
                        // Readers on other threads may finish rounds out of order.
                        let mut rounds = received.rounds.lock().expect("rounds lock");
                        *rounds = (*rounds).max(all / per_round);
                        drop(rounds);
                        received.turn.notify_one();
                    }
                }
                frames = whole;
            }
            anyhow::Ok(())
        });
    }
    let frame = {
        let mut f = vec![b'x'; frame_len];
        // A WebSocket text frame header, so the bytes are what a subscriber reads.
        f[0] = 0x81;
        f[1] = 126;
        f[2..4].copy_from_slice(&((frame_len - 4) as u16).to_be_bytes());
        f
    };
    let started = Instant::now();
    let writer_received = received.clone();
    let writer = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        if let Some(cpu) = cpu {
            pin_this_thread(cpu)?;
        }
        let cpu_before = thread_cpu_ns()?;
        let mut written = 0u64;
        for round in 0..rounds {
            if started.elapsed() > deadline {
                break;
            }
            // Wait, off the CPU, until the readers are at most ROUNDS_AHEAD behind.
            let mut done = writer_received.rounds.lock().expect("rounds lock");
            while *done + ROUNDS_AHEAD <= round {
                let (d, timeout) =
                    writer_received.turn.wait_timeout(done, deadline).expect("rounds lock");
                done = d;
                anyhow::ensure!(!timeout.timed_out(), "the readers stalled at round {round}");
            }
            drop(done);
            for socket in &mut writers {
                socket.write_all(&frame)?;
                written += 1;
            }
        }
        let cpu = thread_cpu_ns()? - cpu_before;
        // The sockets stay open until the readers have everything: dropped with `writers`.
        let wait_until = Instant::now() + deadline;
        while writer_received.frames.load(Ordering::Acquire) < written {
            let done = writer_received.rounds.lock().expect("rounds lock");
            let _ = writer_received.turn.wait_timeout(done, Duration::from_millis(50));
            anyhow::ensure!(Instant::now() < wait_until, "the readers stalled");
        }
        Ok((written, cpu))
    });
    let (written, cpu_ns) = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    let elapsed = started.elapsed();
    let mut errors = 0;
    while let Some(r) = readers.join_next().await {
        if !matches!(r, Ok(Ok(()))) {
            errors += 1;
        }
    }
    Ok(Outcome {
        events: written,
        deliveries: received.frames.load(Ordering::Acquire),
        elapsed,
        errors,
        cpu_s: Some(cpu_ns as f64 / 1e9),
        bytes_per_delivery: Some(frame_len as f64),
        ..Outcome::default()
    })
}

/// The calling thread's CPU time in nanoseconds: the first field of
/// `/proc/thread-self/schedstat` (time on the CPU), finer than `stat`'s clock ticks.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    s.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .context("parsing /proc/thread-self/schedstat")
}

/// Pins the calling thread alone to `cpu` (`taskset -p` on its thread id).
fn pin_this_thread(cpu: usize) -> anyhow::Result<()> {
    // `/proc/thread-self` links to `PID/task/TID`.
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    let tid = link.file_name().and_then(|t| t.to_str()).context("thread id")?.to_string();
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset could not pin the writer to CPU {cpu}");
    Ok(())
}
