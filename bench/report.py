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
           f"| {c['throughput_mibps']:.0f} MiB/s | {c['p50_secs']:.2f} s | {c['p99_secs']:.2f} s | {c['peak_rss_mib']:.0f} MiB |", ""]

if "passthrough" in r:
    p = r["passthrough"]
    md += ["## 5. Passthrough: small GETs with wrk (2 threads, 32 connections, 8 s)", "", "| path | requests/s | p99 |", "|---|---|---|"]
    md += [f"| {row['path']} | {row['rps']:.0f} | {row['p99_ms']:.2f} ms |" for row in p["rows"]]
    md += ["", f"chunkgate / nginx requests/s = **{p['vs_nginx']:.2f}** (target ≥ 0.8); p99 added over direct: **{p['added_p99_ms']:.2f} ms** (target ≤ 1 ms).", "",
           bar("passthrough", [row["path"] for row in p["rows"]], [row["rps"] for row in p["rows"]], "requests/s", "Passthrough GETs"), ""]

if "pacing" in r:
    pc = r["pacing"]
    md += ["## 6. Pacing: 40 uploads against 200 calls per 30 s", "",
           f"{pc['calls']:.0f} calls in {pc['secs']:.1f} s; **{pc['throttled']}** throttled (target 0); **{pc['share_of_allowed'] * 100:.0f}%** of the allowed call rate used over the run (target ≥ 90%).", ""]

md += ["## Optimisation log", "",
       "Per-byte costs on one core, 16 MiB buffers reused (`cargo bench --bench codecs`): base64 encode 2.30 GB/s with `base64`, 11.37 with `base64-simd` (4.9×); decode 2.18 and 8.16 (3.7×); SHA-256 (`sha2`, SHA-NI) 1.79.", "",
       "| change | 1 GiB through chunkgate (`cargo bench --bench upload -- --sizes 1GiB`, two runs) |", "|---|---|",
       "| before: `base64` crate | 327, 328 MiB/s |",
       "| after: `base64-simd` for part encoding (gateway) and decoding (simulator) | 404, 445 MiB/s (+25–35%) |", "",
       "The direct client of comparison 1 uses `base64-simd` too, so the ratio compares like with like.", ""]

md += ["## Where this stands", "",
       "- Met: streaming against nginx, memory (flat from 256 MiB to 4 GiB), latency-bound against the official SDK, pacing (no throttled call, the full allowed rate).",
       "- Missed: streaming against a direct client (target 0.85×) and passthrough requests/s against nginx (target 0.8×); on this 2-core machine the client, the gateway, the simulator (and nginx, or wrk) share two cores, and run-to-run variation is large.",
       "- Done of the optimisation half: base64 crates measured and the faster kept (above). Not done yet: profiling the hot path with perf or callgrind, removing the zero-fill before encoding and the copy of each frame into the part buffer, HTTP/2 to the upstream, the passthrough's per-request costs.",
       "- Memory fixes found by these runs: part buffers are pooled and return themselves when their last holder drops (peak RSS had grown 30% from 256 MiB to 4 GiB), and part 0 now counts against the memory budget (100 concurrent 10 MiB uploads had peaked at 1.9 GiB with a 1 GiB budget; now about 0.9 GiB).",
       ""]

(root / "BENCHMARKS.md").write_text("\n".join(md))
print("wrote BENCHMARKS.md")
