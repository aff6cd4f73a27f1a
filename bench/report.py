"""Turns bench/results/compare.json (from `cargo bench --bench compare`) into BENCHMARKS.md with
PNG charts under bench/results/. Needs matplotlib (pip install matplotlib)."""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = pathlib.Path(__file__).resolve().parent.parent
out = root / "bench" / "results"
r = json.loads((out / "compare.json").read_text())


def bar(name, labels, values, ylabel, title, target=None):
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    bars = ax.bar(labels, values, color=["#2a6f97" if "chunkgate" in l else "#999999" for l in labels])
    ax.bar_label(bars, fmt="%.3g")
    if target is not None:
        ax.axhline(target, color="#c1121f", linestyle="--", linewidth=1, label="target")
        ax.legend()
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png")
    plt.close(fig)
    return f"![{title}](bench/results/{name}.png)"


md = ["# Benchmarks", "", f"`cargo bench --bench compare` then `python3 bench/report.py`, on a {r['cores']}-core machine; "
      "every process on loopback, simulator in digest mode. Each comparison runs its contenders side by side in one run.", ""]

if "throughput" in r:
    t = r["throughput"]
    md += ["## 1. Streaming 1 GiB", "",
           "client → chunkgate → simulator, against a direct client that encodes and PUTs the same 16 MiB parts with the same parallelism (4) straight to the simulator, and the same direct client through nginx (Debian, reverse proxy, request buffering off).", "",
           "Medians of three interleaved rounds (single runs on this shared 2-core machine vary by about a quarter).", "",
           "| path | MiB/s |", "|---|---|",
           f"| chunkgate | {t['chunkgate']:.0f} |", f"| direct | {t['direct']:.0f} |", f"| direct via nginx | {t['nginx']:.0f} |", "",
           f"chunkgate / direct = **{t['vs_direct']:.2f}** (target ≥ 0.85); chunkgate / nginx = **{t['vs_nginx']:.2f}** (target ≥ 1.0).", "",
           bar("throughput", ["chunkgate", "direct", "direct via nginx"], [t["chunkgate"], t["direct"], t["nginx"]], "MiB/s", "Streaming 1 GiB"), ""]
    if "cpu_secs_per_gib" in t:
        c = t["cpu_secs_per_gib"]
        md += ["CPU seconds per GiB, per process (from /proc, averaged over the rounds). On two cores the three processes compete, so throughput follows the sum:", "",
               "| path | client | simulator | proxy | sum |", "|---|---|---|---|---|"]
        for name, key in [("chunkgate", "chunkgate"), ("direct", "direct"), ("direct via nginx", "nginx")]:
            v = c[key]
            md.append(f"| {name} | {v['client']:.2f} | {v['simulator']:.2f} | {v['proxy']:.2f} | {v['client'] + v['simulator'] + v['proxy']:.2f} |")
        md += ["", "The gateway does what neither baseline does: it takes the SHA-256 of every byte (to check `Content-Digest` and the upstream's checksum before committing; about 0.55 s per GiB at 1.8 GB/s with SHA-NI) and receives the raw document over one more loopback hop before encoding it.", ""]
    if "direct_hashing" in t:
        md += [f"For the record (not a target): the direct client taking the SHA-256 of what it sends, the gateway's integrity work, streams {t['direct_hashing']:.0f} MiB/s; chunkgate is **{t['chunkgate'] / t['direct_hashing']:.2f}×** that. chunkgate with `server.scheduler = \"work-stealing\"` streams {t.get('chunkgate_work_stealing', float('nan')):.0f} MiB/s, and with `server.worker_threads = 1` {t['chunkgate_one_thread']:.0f} MiB/s (medians of three rounds each).", ""]

if "memory" in r:
    m = r["memory"]
    labels = [f"{row['size_mib']} MiB" for row in m["rows"]]
    md += ["## 2. Memory", "", "| document | chunkgate peak RSS |", "|---|---|"]
    md += [f"| {l} | {row['peak_rss_mib']:.1f} MiB |" for l, row in zip(labels, m["rows"])]
    md += ["", f"4 GiB against 256 MiB: **{m['growth'] * 100:+.1f}%** (target within 10%).", "",
           bar("memory", [f"chunkgate {l}" for l in labels], [row["peak_rss_mib"] for row in m["rows"]], "MiB", "Gateway peak RSS"), ""]

if "latency" in r:
    lat = r["latency"]
    md += ["## 3. Latency-bound: 50 MB, 80 ms per call", "",
           "DocuSign's default limits, 1 MiB parts; chunkgate at 1, 4 and 8 parts in flight against the official Python SDK (`docusign-esign`) doing the same chunked upload itself.", "",
           "| client | seconds |", "|---|---|"]
    md += [f"| {row['client']} | {row['secs']:.2f} |" for row in lat["rows"]]
    md += ["", f"chunkgate at 8 in flight: **{lat['speedup_at_8']:.1f}×** faster than the SDK (target ≥ 4×).", "",
           bar("latency", [row["client"].replace("official Python SDK (sequential parts)", "SDK").replace(", ", "\n") for row in lat["rows"]], [row["secs"] for row in lat["rows"]], "seconds", "50 MB at 80 ms latency"), ""]

if "concurrency" in r:
    c = r["concurrency"]
    md += ["## 4. 100 concurrent 10 MiB uploads", "",
           "| total throughput | p50 upload | p99 upload | peak RSS |", "|---|---|---|---|",
           f"| {c['throughput_mibps']:.0f} MiB/s | {c['p50_secs']:.2f} s | {c['p99_secs']:.2f} s | {c['peak_rss_mib']:.0f} MiB |", "",
           "8 MiB parts; `upload.memory_budget_bytes` is the default 1 GiB. The budget counts each part's body (4/3 of its size) from the moment it is read until the upstream has it, and idle pooled buffers only fit in what it has free; peak RSS is that budget, full, plus the connections' read buffers and the allocator's own (about 15–20% here). Uploads beyond the budget wait for room, none fails.", ""]

if "passthrough" in r:
    p = r["passthrough"]
    md += ["## 5. Passthrough: small GETs with wrk (2 threads, 32 connections, 8 s)", "",
           "Medians of three interleaved rounds; proxy CPU per request from /proc.", "",
           "| path | requests/s | p99 | proxy CPU per request |", "|---|---|---|---|"]
    md += [f"| {row['path']} | {row['rps']:.0f} | {row['p99_ms']:.2f} ms | {row.get('proxy_cpu_us', 0):.1f} µs |" for row in p["rows"]]
    md += ["", f"chunkgate / nginx requests/s = **{p['vs_nginx']:.2f}** (target ≥ 0.8); p99 added over direct: **{p['added_p99_ms']:.2f} ms** (target ≤ 1 ms)."]
    if "work_stealing" in p:
        w, o = p["work_stealing"], p["one_thread"]
        md += ["", f"chunkgate runs with the default `server.scheduler = \"per-thread\"`: an event loop per core, each taking connections from the shared listener and keeping its own upstream connections, as nginx's workers do. The same build with `\"work-stealing\"` (one tokio runtime whose threads wake each other for every request): **{w['vs_nginx']:.2f}×** nginx, **{w['added_p99_ms']:+.2f} ms** p99 over direct; with `server.worker_threads = 1` (one event loop, as the Kubernetes sidecar runs): **{o['vs_nginx']:.2f}×**, **{o['added_p99_ms']:+.2f} ms**."]
    md += ["",
           bar("passthrough", [row["path"] for row in p["rows"]], [row["rps"] for row in p["rows"]], "requests/s", "Passthrough GETs"), ""]

if "pacing" in r:
    pc = r["pacing"]
    md += ["## 6. Pacing: 40 uploads against 200 calls per 30 s", "",
           f"{pc['calls']:.0f} calls in {pc['secs']:.1f} s; **{pc['throttled']}** throttled (target 0); **{pc['share_of_allowed'] * 100:.0f}%** of the allowed call rate used over the run (target ≥ 90%).", ""]

if "protocol" in r:
    pr = r["protocol"]
    md += ["## 7. The upstream over TLS: HTTP/2 against HTTP/1.1", "",
           "The simulator serving TLS (a generated CA); the gateway with `upstream.http2` on (ALPN offers h2; the calls of each thread share one connection) and off (a pooled connection per call in flight). 1 GiB streamed three times (median), then wrk as in 5.", "",
           "| protocol | streaming | gateway CPU per GiB | passthrough requests/s | p99 | CPU per request |", "|---|---|---|---|---|---|"]
    md += [f"| {row['protocol']} | {row['stream_mibps']:.0f} MiB/s | {row['stream_cpu_secs_per_gib']:.2f} s | {row['passthrough_rps']:.0f} | {row['passthrough_p99_ms']:.2f} ms | {row['passthrough_cpu_us']:.1f} µs |" for row in pr["rows"]]
    md += ["", "HTTP/2 carries parts in 16 KiB frames under one connection's flow-control window (set by the upstream); HTTP/1.1 writes each part whole on its own connection. HTTP/1.1 is the default (`upstream.http2 = false`).", ""]

def scheduler_row():
    rows = {row["path"]: row for row in r.get("passthrough", {}).get("rows", [])}
    ws, pt = rows.get("chunkgate, work-stealing"), rows.get("chunkgate")
    if not ws or not pt:
        return "| `server.scheduler = \"per-thread\"` (default): an event loop per core sharing the listener, upstream clients per thread | work-stealing | (no passthrough figures in this run) |"
    nginx = rows["nginx"]["rps"]
    return (f"| `server.scheduler = \"per-thread\"` (the default): an event loop per core sharing the listener, upstream clients per thread, so a request, its upstream connection and their tasks never cross threads (section 5, this run) "
            f"| work-stealing: {ws['proxy_cpu_us']:.1f} µs CPU per proxied request, {ws['rps'] / nginx:.2f}× nginx, p99 {ws['p99_ms']:.2f} ms "
            f"| {pt['proxy_cpu_us']:.1f} µs, {pt['rps'] / nginx:.2f}×, p99 {pt['p99_ms']:.2f} ms |")


def sidecars_section(sc):
    """Section 8, from bench/results/sidecars.json (`cargo bench --bench sidecars`)."""
    out = ["## 8. Many sidecars, one account: 200 calls per 30 s, 3,000 per hour", "",
           "Every configuration against its own account in one simulator process each, all at once: a client keeps 16 uploads of 192 KiB (5 calls each) in flight, spread over the sidecars, until the hour is spent. The baseline is 4 sidecars that do not coordinate (each believes it has the whole account). Share of the allowed rate: calls over what the limits allow in the time taken (the burst limit's, capped by the hour's); the burst rate alone is given beside it. Redis: each operation's time inside the sidecars (`chunkgate_cluster_op_duration_seconds`, all sidecars of the configuration), an upstream call makes one.", "",
           "| sidecars | Redis | calls | time | throttled | share of allowed rate (of the burst rate) | committed / what the hour carries | left open | Redis op p50 / p99 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(sc, key=lambda k: (not sc[k]["redis"], sc[k]["sidecars"])):
        row = sc[key]
        burst = row["calls"] / (200 * max(row["secs"], 30) / 30)
        redis = row["redis_op_ms"]
        lat = f"{redis['p50']:.2f} / {redis['p99']:.2f} ms" if redis.get("p50") is not None else "-"
        out.append(f"| {row['sidecars']} | {'shared' if row['redis'] else 'none (uncoordinated)'} | {row['calls']:.0f} | {row['secs']:.0f} s | **{row['throttled']}** | {row['share_of_allowed'] * 100:.0f}% ({burst * 100:.0f}%) | {row['committed']} / {row['can_carry']} ({row['committed'] / row['can_carry'] * 100:.1f}%) | {row['open']} | {lat} |")
    out += ["", "Targets: 0 throttled, ≥ 90% of the allowed rate, ≥ 95% of what the budget can carry. The uncoordinated sidecars spent more than the account allows, were throttled, and left uploads open upstream whose deletes waited for the next hour. The Redis times were taken with all 19 sidecars, 5 simulators and the client on 2 cores at once; they include the wait for the sidecar's own event loop, not only Redis.", ""]
    return out

if (root / "bench/results/sidecars.json").exists():
    md += sidecars_section(json.loads((root / "bench/results/sidecars.json").read_text()))

def tus_section(t):
    """Section 9, from bench/results/tus.json (`cargo bench --bench tus`)."""
    out = ["## 9. tus against the streamed path: a 50 MB document", "",
           "5 MiB PATCHes against one streamed request, each path on a fresh gateway (release build, default settings, `tus.dir` set for both), three rounds, the median; gateway CPU and bytes written to disk (`/proc/PID/io`, `write_bytes`) per document.", "",
           "| path | time | throughput | gateway CPU | written to disk | peak RSS |", "|---|---|---|---|---|---|"]
    for row in t["rows"]:
        out.append(f"| {row['path']} | {row['secs']:.2f} s | {row['mibps']:.0f} MiB/s | {row['cpu_secs']:.2f} s | {row['disk_bytes'] / 1e6:.1f} MB ({row['disk_bytes'] / 50e6:.2f}× the document) | {row['peak_rss_mib']:.1f} MiB |")
    out += ["", f"tus reaches **{t['tus_vs_streamed']:.2f}×** the streamed path's throughput (issue 16 asks ≥ 0.8×) and writes each byte to disk once. Not yet profiled; what tus does beyond the streamed path: each PATCH is synced to disk before its answer (the protocol's promise), and the spool is read back for the upstream parts (a second pass over the bytes).", ""]
    return out

if (root / "bench/results/tus.json").exists():
    md += tus_section(json.loads((root / "bench/results/tus.json").read_text()))

md += ["## Optimisation log", "",
       "How each change was measured: `bench/profile/stream-cpu.sh BIN` (gateway CPU seconds per GiB over three 1 GiB uploads with curl; `PERF=1` adds a perf profile), `bench/profile/passthrough-instructions.sh BIN` (callgrind: instructions per proxied GET, repeatable to a fraction of a percent), `cargo bench --bench codecs` (one core), and the comparisons above. Before and after are two builds run in turn on the same machine.", "",
       "| change | before | after |", "|---|---|---|",
       "| `base64-simd` instead of `base64` for part encoding (gateway) and decoding (simulator); codecs: encode 2.30 → 11.37 GB/s, decode 2.18 → 8.16 | 1 GiB through chunkgate: 327, 328 MiB/s | 404, 445 MiB/s |",
       "| each frame base64-encoded straight into its part body (no raw copy of the part, no zero-fill of the body); a part holds 4/3 of its size in memory instead of 7/3 | gateway 1.66–1.79 CPU s/GiB | 1.55–1.66 |",
       "| `server.read_buffer_bytes` 512 KiB (was tied to the 64 KiB head limit: 16,000 reads and wake-ups per GiB); the head limit is now checked by the gateway (431 `HEADERS_TOO_LARGE`) | gateway 1.55–1.63 CPU s/GiB | 1.35–1.38 (1 MiB: 1.28) |",
       "| SHA-256: `ring` measured against `sha2` (both SHA-NI): 1.80 and 1.79 GB/s whole, 1.81 and 1.79 in 64 KiB frames | `sha2` | kept `sha2` (no gain) |",
       "| mimalloc as the global allocator (glibc malloc, free and consolidation were 8% of a proxied request's samples) | 65,800 instructions per proxied GET | 61,900 |",
       "| passthrough per-request work: screen without allocating (one pass), caller identity built only for uploads, caller-key header parsed once, hop-by-hop removal only when present, the client's parsed path reused for the upstream URI, passthrough counters looked up once per status, no allocation per answer for rate-limit headers | 61,900 instructions per proxied GET | 55,100 |",
       "| `server.worker_threads = 1` (a single-threaded runtime; opt-in, used by the Kubernetes sidecar) against one worker per core | passthrough 25–29 µs CPU per request; 0.71–0.82× nginx over four full runs | 22 µs; 0.76–0.84×; streaming 5–10% slower (one core) |",
       "| `upstream.http2` off by default (section 7) | HTTP/2: 346 MiB/s, 2.23 CPU s/GiB | HTTP/1.1: 463 MiB/s, 1.78 |",
       scheduler_row(),
       "| an upload's SHA-256 taken beside the I/O: frames of 64 KiB and more hashed in order on tokio's blocking pool (at most 4 MiB waiting) while the upload's thread encodes and sends parts (`bench/profile/stream-cpu.sh`, per-thread scheduler, rounds after the first) | 551–574 MiB/s | 573–659 MiB/s; the same CPU per GiB (1.25–1.38 s) |",
       "| simulator: part bodies read once into pooled buffers sized by `Content-Length`; the exact `{\"data\":\"…\"}` body decoded in place without a JSON parse (any other shape parsed as before). Its profile had shown page faults on fresh buffers 14%, copies 13%, JSON string scanning 13% | simulator 1.62–1.91 CPU s per GiB | 1.15–1.26 (both paths of every comparison use it) |",
       "", "Where the gateway's CPU goes now, streaming (perf, `PERF=1 bench/profile/stream-cpu.sh`): SHA-256 about 43%, kernel copies to and from sockets about 23%, base64 about 7%, the rest TCP processing and wake-ups; SHA-256 runs at the SHA-NI ceiling (the `sha2`, `ring` and `aws-lc-rs` crates all measure alike). Passthrough: about 60% of the gateway's time is in the kernel (two sockets per request, four system calls), the rest in hyper, the allocator and the gateway's checks.", ""]

t, p = r.get("throughput", {}), r.get("passthrough", {})
met, missed = [], []
def verdict(ok, text):
    (met if ok else missed).append(text)
if t:
    verdict(t["vs_direct"] >= 0.85, f"streaming against a direct client ({t['vs_direct']:.2f}×, target 0.85×)")
    verdict(t["vs_nginx"] >= 1.0, f"streaming against nginx ({t['vs_nginx']:.2f}×, target 1.0×)")
if "memory" in r:
    verdict(abs(r["memory"]["growth"]) <= 0.10, f"memory ({r['memory']['growth'] * 100:+.1f}% from 256 MiB to 4 GiB, target within 10%)")
if "latency" in r:
    verdict(r["latency"]["speedup_at_8"] >= 4, f"latency-bound against the official SDK ({r['latency']['speedup_at_8']:.1f}×, target 4×)")
if p:
    verdict(p["vs_nginx"] >= 0.8, f"passthrough requests/s against nginx ({p['vs_nginx']:.2f}×, target 0.8×)")
    verdict(p["added_p99_ms"] <= 1.0, f"passthrough p99 added ({p['added_p99_ms']:+.2f} ms, target ≤ 1 ms)")
if "pacing" in r:
    pc = r["pacing"]
    verdict(pc["throttled"] == 0 and pc["share_of_allowed"] >= 0.9, f"pacing ({pc['throttled']} throttled, {pc['share_of_allowed'] * 100:.0f}% of the allowed rate)")
md += ["## Where this stands", "",
       "- Met in this run: " + "; ".join(met) + ".",
       "- Missed in this run: " + ("; ".join(missed) if missed else "none") + ".",
       "- On this 2-core machine the client, the gateway and the simulator (and nginx, or wrk) share two cores; single runs vary by up to a quarter, so figures near a target can land on either side of it from one run to the next. The streaming gap to a direct client is the gateway's own work per byte (SHA-256 of every byte, one more loopback hop), about 1.4 CPU seconds per GiB of which 0.55 is the hash; against a direct client that hashes too, chunkgate is " + (f"{t['chunkgate'] / t['direct_hashing']:.2f}×." if "direct_hashing" in t else "close."),
       "- The full run before this one (the same code but for where hashed frames are freed) gave: streaming 0.75× direct and 1.24× nginx; passthrough 0.83× nginx, +0.20 ms p99; peak RSS +12.1% from 256 MiB to 4 GiB, which that fix brought back (frames freed by the hashing thread had been reused by the allocator only late). The last run with the work-stealing scheduler as the default and the slower simulator gave streaming 0.76× direct and 1.14× nginx, passthrough 0.77× nginx, +1.39 ms p99.",
       "- The simulator got cheaper in this round (1.7 → 1.2 CPU s per GiB). Both paths of every comparison use it; on two shared cores the direct client, which does less work of its own, gained more from the freed CPU (785 → 959 MiB/s) than the gateway (597 → 680), so the ratio to a direct client moved down although chunkgate itself got faster.",
       "- Memory fixes found by these runs: part buffers are pooled and return themselves when their last holder drops (peak RSS had grown 30% from 256 MiB to 4 GiB), and part 0 counts against the memory budget (100 concurrent 10 MiB uploads had peaked at 1.9 GiB with a 1 GiB budget).",
       ""]

(root / "BENCHMARKS.md").write_text("\n".join(md))
print("wrote BENCHMARKS.md")
