//! The `chunkgate` command: thin wiring over the library.

use std::{
    alloc::{GlobalAlloc, Layout},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
};

use chunkgate::{
    config::{Config, Dialect, EXIT_BAD_CONFIG, Scheduler},
    edge::gateway,
    sim::{self, config::Storage},
    telemetry,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chunkgate", version, about = "Upload gateway sidecar for DocuSign-style chunked uploads")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM, SIGINT, SIGHUP or SIGQUIT (each drains first).
    Serve {
        /// Config file; without one, the defaults (and CHUNKGATE_* overrides) apply.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the upstream simulator until SIGTERM, SIGINT, SIGHUP or SIGQUIT.
    Sim {
        /// Config file whose `[sim]` section to use.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (port 0 picks one; the bound address is printed).
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long, value_enum)]
        dialect: Option<Dialect>,
        #[arg(long, value_enum)]
        storage: Option<Storage>,
        /// Status of throttling answers: 400 or 429.
        #[arg(long)]
        throttle_status: Option<u16>,
        /// Serve TLS with this certificate chain (PEM); needs --tls-key.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
    /// Stream a generated document (or --file) through an in-process gateway and simulator.
    Demo {
        /// Size of the generated document, e.g. 32MiB, 500KB, 1048576.
        #[arg(long, default_value = "32MiB", value_parser = parse_size)]
        size: u64,
        /// Stream this file instead of a generated document.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        part_size: u64,
        #[arg(long, default_value_t = 4)]
        max_in_flight: usize,
        /// Latency the simulator adds to each call.
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        /// Make the simulator fail some part calls (5xx, stored-then-dropped, throttled).
        #[arg(long)]
        faults: bool,
    },
    /// Exit 0 if the admin listener answers /healthz (for container health checks).
    Healthcheck {
        /// The admin address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Validate a config file (and environment overrides), listing every problem.
    CheckConfig { file: PathBuf },
}

/// mimalloc: per-thread free lists; glibc's malloc spent several percent of a proxied request in
/// allocation and consolidation (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, asked the way Rust's system allocator asks `malloc`: plainly whenever the block's own
/// alignment is enough (every mimalloc block is word-aligned, and one of 16 bytes or more is
/// 16-byte aligned), by the aligned calls only beyond that. The `mimalloc` crate asks for every
/// block through `mi_malloc_aligned`, whose fast path covers blocks up to 1 KiB: a larger block
/// (read buffers, bodies, header maps) took the generic aligned path and, unless its size was a
/// power of two, the over-allocating one: 8.7 of a proxied GET's 28 allocations, about 1,700
/// instructions (callgrind, `bench/profile/passthrough-instructions.sh`).
struct Mimalloc;

/// The alignment every mimalloc block of at least this size has (`MI_MAX_ALIGN_SIZE`).
const NATURAL_ALIGN: usize = 16;

/// Whether a plain allocation of `size` bytes is aligned enough for `align`.
fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc with at least the layout's alignment (plain calls only
// where `natural` holds, see above), and every block is given back to it with `mi_free`, which
// takes blocks from either kind of call.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation calls take sizes and alignments only.
        unsafe {
            if natural(layout.size(), layout.align()) {
                libmimalloc_sys::mi_malloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if natural(layout.size(), layout.align()) {
                libmimalloc_sys::mi_zalloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller gives back a block this allocator gave out.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller gives a block this allocator gave out for `layout`; the new block
        // keeps its alignment by the same rule as `alloc`.
        unsafe {
            if natural(new_size, layout.align()) {
                libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Frees the calling thread's empty mimalloc pages and returns their memory to the system.
fn collect_heap() {
    // SAFETY: mi_collect takes no pointers; it walks the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Transparent huge pages off for this process: the allocator's fresh memory would otherwise be
/// faulted in and zeroed 2 MiB at a time (the kernel's `clear_page` was 8% of the gateway's CPU
/// while streaming, and 2 MiB pages hold memory an idle sidecar could give back). Measured with
/// `bench/profile/stream-cpu.sh`: gateway 1.55-1.63 CPU s per GiB with them, 1.46 without.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integers only; it sets a flag on this process's memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    chunkgate::memory::install(collect_heap);
    match Cli::parse().command {
        Command::Serve { config } => {
            catch_stop_signals_early();
            serve_command(config)
        }
        Command::Sim { config, listen, dialect, storage, throttle_status, tls_cert, tls_key } => {
            catch_stop_signals_early();
            let flags = SimFlags { listen, dialect, storage, throttle_status, tls_cert, tls_key };
            runtime(0).block_on(sim_command(config, flags))
        }
        Command::Demo { size, file, part_size, max_in_flight, latency_ms, faults } => {
            let part_size = part_size as usize;
            let opts = chunkgate::demo::Options { size, file, part_size, max_in_flight, latency_ms, faults };
            runtime(0).block_on(demo_command(opts))
        }
        Command::Healthcheck { admin } => runtime(0).block_on(healthcheck_command(admin)),
        Command::CheckConfig { file } => check_config_command(&file),
    }
}

/// From the first moment of `serve` and `sim`: a stop signal is noted (`EARLY_STOP`) for the drain
/// to start as soon as the server listens for signals, rather than ending the process by its
/// default action while the configuration is read and the runtime built (uploads of a restarted
/// sidecar's predecessor are unaffected; this one has none yet, but it would exit without the
/// drain's log and status). The other signals the gateway ignores are ignored from here on too.
/// The handlers stay: they only store a number, beside tokio's, which serve every later signal.
fn catch_stop_signals_early() {
    use std::sync::atomic::Ordering::Relaxed;
    #[cfg(unix)]
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        let _ = unsafe {
            signal_hook_registry::register(signal, move || {
                let _ = telemetry::EARLY_STOP.compare_exchange(0, signal, Relaxed, Relaxed);
            })
        };
    }
    #[cfg(unix)]
    for signal in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM, libc::SIGVTALRM, libc::SIGIO] {
        // SAFETY: the action does nothing.
        let _ = unsafe { signal_hook_registry::register(signal, || {}) };
    }
}

/// `serve`: its runtime is sized from its configuration.
fn serve_command(config: Option<PathBuf>) -> ExitCode {
    let cfg = match Config::load(config.as_deref(), std::env::vars()) {
        Ok(cfg) => cfg,
        Err(problems) => return bad_config(&problems),
    };
    // Per thread: this thread's runtime is the first event loop, and the listener starts the
    // others. Work-stealing: one runtime with a worker per thread.
    let workers = match cfg.server.scheduler {
        Scheduler::PerThread => 1,
        Scheduler::WorkStealing => cfg.server.threads(),
    };
    runtime(workers).block_on(serve(cfg))
}

/// A tokio runtime with `workers` threads: 0 = one per core (work-stealing), 1 = a single thread.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder
        .enable_all()
        .on_thread_park(chunkgate::memory::on_thread_park)
        .on_thread_unpark(chunkgate::memory::on_thread_unpark)
        .build()
        .expect("a tokio runtime")
}

async fn serve(cfg: Config) -> ExitCode {
    // First of all: a signal that came before its handler would end the process at once.
    let stop = telemetry::shutdown_signal();
    telemetry::init(&cfg.log);
    // The allocator's idle memory goes back to the system (see `memory`).
    let _ticker = tokio::spawn(chunkgate::memory::ticker());
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    let (listen, admin_listen) = (cfg.server.listen, cfg.admin.listen);
    let gw = match gateway::Gateway::new(cfg) {
        Ok(gw) => gw,
        Err(problem) => return bad_config(&chunkgate::config::Problems(vec![problem])),
    };
    let bound = async { Ok::<_, String>((gateway::bind(listen).await?, gateway::bind(admin_listen).await?)) };
    let ((listener, addr), (admin, admin_addr)) = match bound.await {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("chunkgate serve: {err}");
            return ExitCode::from(1);
        }
    };
    let scheme = if gw.config.server.tls_cert.is_some() { "https" } else { "http" };
    announce(&format!("chunkgate listening on {scheme}://{addr}"));
    announce(&format!("chunkgate admin on http://{admin_addr} (/healthz /readyz /metrics)"));
    tracing::info!(%addr, %admin_addr, upstream = %gw.config.upstream.base_url, "gateway started");
    gateway::run_with_admin(listener, admin, gw, stop).await;
    tracing::info!("gateway stopped");
    ExitCode::SUCCESS
}

async fn demo_command(opts: chunkgate::demo::Options) -> ExitCode {
    if opts.faults {
        let f = chunkgate::demo::faults(&opts);
        println!(
            "simulator faults on part calls: {:.0}% 5xx, {:.0}% stored then dropped, {:.0}% throttled",
            f.error_rate * 100.0,
            f.drop_after_store_rate * 100.0,
            f.throttle_rate * 100.0
        );
    }
    match chunkgate::demo::run(opts).await {
        Ok(report) => {
            chunkgate::demo::print(&report);
            if report.succeeded() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(err) => {
            eprintln!("chunkgate demo: {err}");
            ExitCode::from(1)
        }
    }
}

async fn healthcheck_command(admin: SocketAddr) -> ExitCode {
    let probe = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(admin).await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        _ => {
            eprintln!("chunkgate healthcheck: {admin}/healthz did not answer 200");
            ExitCode::from(1)
        }
    }
}

fn check_config_command(file: &std::path::Path) -> ExitCode {
    match Config::load(Some(file), std::env::vars()) {
        Ok(cfg) => {
            let warnings = cfg.warnings();
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            let note = if warnings.is_empty() { String::new() } else { format!(" ({} warnings)", warnings.len()) };
            println!("{}: ok{note}", file.display());
            ExitCode::SUCCESS
        }
        Err(problems) => bad_config(&problems),
    }
}

/// `chunkgate sim`'s flags, over its config file's `[sim]` section.
struct SimFlags {
    listen: Option<SocketAddr>,
    dialect: Option<Dialect>,
    storage: Option<Storage>,
    throttle_status: Option<u16>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

async fn sim_command(config: Option<PathBuf>, flags: SimFlags) -> ExitCode {
    let mut cfg = match Config::load(config.as_deref(), std::env::vars()) {
        Ok(cfg) => cfg,
        Err(problems) => return bad_config(&problems),
    };
    let stop = telemetry::shutdown_signal();
    telemetry::init(&cfg.log);
    let s = &mut cfg.sim;
    s.listen = flags.listen.unwrap_or(s.listen);
    s.dialect = flags.dialect.unwrap_or(s.dialect);
    s.storage = flags.storage.unwrap_or(s.storage);
    s.throttle_status = flags.throttle_status.unwrap_or(s.throttle_status);
    s.tls_cert = flags.tls_cert.or(s.tls_cert.take());
    s.tls_key = flags.tls_key.or(s.tls_key.take());
    let problems = s.problems();
    if !problems.is_empty() {
        return bad_config(&chunkgate::config::Problems(problems));
    }
    let listener = match tokio::net::TcpListener::bind(s.listen).await {
        Ok(l) => l,
        Err(err) => {
            eprintln!("chunkgate sim: cannot listen on {}: {err}", s.listen);
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().expect("bound listener has an address");
    let scheme = if s.tls_cert.is_some() { "https" } else { "http" };
    announce(&format!("chunkgate sim listening on {scheme}://{addr}"));
    tracing::info!(%addr, dialect = ?s.dialect, storage = ?s.storage, "simulator started");
    match sim::run(listener, sim::Sim::new(cfg.sim), stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chunkgate sim: {err}");
            ExitCode::from(1)
        }
    }
}

/// Prints a line to stdout for whoever started the process. A closed stdout (the reader went
/// away) must not take a running server down, as `println!` would by panicking.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// `32MiB`, `500KB`, `1GiB` or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown unit {other:?} in {s}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("too large: {s}"))
}

fn bad_config(problems: &chunkgate::config::Problems) -> ExitCode {
    eprintln!("chunkgate: the configuration has problems:\n{problems}");
    ExitCode::from(EXIT_BAD_CONFIG as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block has its layout's alignment and keeps its bytes through a move, whichever call
    /// made it (plain or aligned, both ways across the 1 KiB fast path and the 16-byte line).
    #[test]
    fn blocks_keep_their_alignment_and_bytes() {
        let sizes = [1, 7, 8, 9, 15, 16, 17, 24, 40, 100, 1000, 1024, 1025, 1500, 4097, 70_000, 1 << 20];
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is written within its size and freed once.
                unsafe {
                    let zeroed = ALLOCATOR.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size} aligned {align}");
                    assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|&b| b == 0));
                    ALLOCATOR.dealloc(zeroed, layout);

                    let p = ALLOCATOR.alloc(layout);
                    assert_eq!(p as usize % align, 0, "{size} aligned {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    // Smaller, then larger again: the bytes the smaller block kept stay.
                    let small = size / 2 + 1;
                    let p = ALLOCATOR.realloc(p, layout, small);
                    assert_eq!(p as usize % align, 0, "{size} -> {small} aligned {align}");
                    let big = size * 3 + 5;
                    let p = ALLOCATOR.realloc(p, Layout::from_size_align(small, align).unwrap(), big);
                    assert_eq!(p as usize % align, 0, "{small} -> {big} aligned {align}");
                    assert!((0..small).all(|i| *p.add(i) == (i % 251) as u8), "{size} -> {small} -> {big}");
                    ALLOCATOR.dealloc(p, Layout::from_size_align(big, align).unwrap());
                }
            }
        }
    }
}
