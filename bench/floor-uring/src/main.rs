//! The floor of one write per delivery, with `write(2)` per frame or with io_uring submitting
//! a batch of sends (to many sockets) per `io_uring_enter`: does batching the system calls
//! across sockets lower the kernel's cost per delivery?
//!
//! Run (outside the workspace, not built by CI: it is the one place with `unsafe`, the
//! submission of a send):
//! `cargo run --release --manifest-path bench/floor-uring/Cargo.toml -- MODE CONNS EVENTS BATCH`
//! with MODE `write`, `writev` (the frame in two parts) or `uring`;
//! readers run on a tokio runtime in the same process, the writer on its own thread.
//! Prints the writer's CPU (its thread plus io_uring's io-wq workers) per write.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncReadExt;

const FRAME: usize = 152;

fn thread_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU of this thread plus every io-wq worker of the process.
fn writer_cpu_ns() -> u64 {
    let mut ns = thread_ns("/proc/thread-self/schedstat");
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("iou-") {
            ns += thread_ns(t.path().join("schedstat").to_str().unwrap());
        }
    }
    ns
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args[1].clone();
    let conns: usize = args[2].parse().unwrap();
    let events: u64 = args[3].parse().unwrap();
    let batch: usize = args.get(4).map_or(64, |b| b.parse().unwrap());
    let rounds = events.div_ceil(conns as u64);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let mut socks = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..conns {
        let s = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
        let (a, _) = listener.accept().unwrap();
        a.set_nodelay(true).unwrap();
        socks.push(a);
        let received = received.clone();
        let want = rounds * FRAME as u64;
        readers.push(rt.spawn(async move {
            let mut s = s;
            let mut buf = vec![0u8; 16384];
            let mut got = 0u64;
            let mut frames = 0u64;
            while got < want {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got += n as u64;
                let whole = got / FRAME as u64;
                received.fetch_add(whole - frames, Ordering::Relaxed);
                frames = whole;
            }
        }));
    }
    let frame = vec![b'x'; FRAME];
    let start = std::time::Instant::now();
    let writer = std::thread::spawn(move || {
        let mut ns = 0u64;
        let mut written = 0u64;
        let mut ring = io_uring::IoUring::new(4096).unwrap();
        for round in 0..rounds {
            // Readers at most 2 rounds behind (spin-free: yield while waiting).
            while received.load(Ordering::Relaxed) + 2 * conns as u64 <= round * conns as u64 {
                std::thread::yield_now();
            }
            let before = writer_cpu_ns();
            if mode == "write" {
                for s in &mut socks {
                    s.write_all(&frame).unwrap();
                    written += 1;
                }
            } else if mode == "writev" {
                // The frame as a WebSocket writer without a copy sends it: header, payload.
                for s in &mut socks {
                    let parts = [std::io::IoSlice::new(&frame[..2]), std::io::IoSlice::new(&frame[2..])];
                    assert_eq!(s.write_vectored(&parts).unwrap(), FRAME, "short writev");
                    written += 1;
                }
            } else {
                for chunk in socks.chunks(batch) {
                    for s in chunk {
                        let e = io_uring::opcode::Send::new(
                            io_uring::types::Fd(s.as_raw_fd()),
                            frame.as_ptr(),
                            FRAME as u32,
                        )
                        .build();
                        // SAFETY: `frame` outlives the submission (waited for below).
                        unsafe { ring.submission().push(&e).unwrap() };
                    }
                    ring.submit_and_wait(chunk.len()).unwrap();
                    for c in ring.completion() {
                        assert_eq!(c.result(), FRAME as i32, "short or failed send");
                        written += 1;
                    }
                }
            }
            ns += writer_cpu_ns() - before;
        }
        (written, ns)
    });
    let (written, ns) = writer.join().unwrap();
    for r in readers {
        rt.block_on(r).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} conns={conns} batch={batch} writes={written} writer_cpu_s={:.3} writes_per_cpu_s={:.0} us_per_write={:.2} wall_writes_per_s={:.0}",
        args[1],
        ns as f64 / 1e9,
        written as f64 / (ns as f64 / 1e9),
        ns as f64 / 1e3 / written as f64,
        written as f64 / secs
    );
}
