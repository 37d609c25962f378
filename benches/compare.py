#!/usr/bin/env python3
"""marco against llama.cpp on the same GGUF, in one run, interleaved, as ratios.

    python3 benches/compare.py [--model M.gguf] [-p 512] [-n 64] [-t 1,2] [-r 3] [--busy]

Each round runs `marco bench` and `llama-bench` once per thread count, alternating, so both see
the same machine state; the table gives mean ± sd tokens/s over the rounds and marco/llama.cpp.
`--busy` repeats the decode test while another process keeps one core busy (a shared machine).
llama-bench is built by benches/build-llama-bench.sh (cached under $MARCO_HOME/peers).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_model():
    home = Path(os.environ.get("MARCO_HOME") or Path.home() / ".cache" / "marco")
    return str(home / "models" / "qwen2.5-coder-0.5b-instruct.gguf")


def run_marco(marco, model, p, n, t):
    out = subprocess.run(
        [marco, "bench", "-m", model, "-p", str(p), "-n", str(n), "-t", str(t), "-r", "1", "--json"],
        capture_output=True, text=True, check=True)
    rss = re.search(r"peak RSS (\d+) kB", out.stderr)
    rows = json.loads(out.stdout)
    return rows, int(rss.group(1)) if rss else None


def run_llama(llama_bench, model, p, n, t):
    out = subprocess.run(
        [llama_bench, "-m", model, "-p", str(p), "-n", str(n), "-t", str(t), "-r", "1", "-o", "json"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_name(row):
    return f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"


def collect(results, engine, rows, t, tag=""):
    for row in rows:
        key = (tag + test_name(row), t)
        results.setdefault(key, {}).setdefault(engine, []).append(row["avg_ts"])


def fmt(v):
    if not v:
        return "-"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):8.2f} ± {sd:5.2f}"


def print_table(results):
    print("| test | threads | marco t/s | llama.cpp t/s | marco / llama.cpp |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (test, t), by in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        m, l = by.get("marco", []), by.get("llama.cpp", [])
        ratio = statistics.mean(m) / statistics.mean(l) if m and l else float("nan")
        print(f"| {test} | {t} | {fmt(m)} | {fmt(l)} | {ratio:.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model())
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", default="1,2")
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--busy", action="store_true", help="also measure decode beside a busy process")
    ap.add_argument("--marco", default=str(ROOT / "target" / "release" / "marco"))
    ap.add_argument("--llama-bench", default=None)
    a = ap.parse_args()
    threads = [int(x) for x in a.t.split(",")]
    llama = a.llama_bench or subprocess.run(
        ["bash", str(ROOT / "benches" / "build-llama-bench.sh")],
        capture_output=True, text=True, check=True).stdout.strip()
    print(f"model: {a.model}\nmachine: {os.cpu_count()} vCPUs, load average {os.getloadavg()}", file=sys.stderr)
    results, rss = {}, []
    for r in range(a.r):
        for t in threads:
            print(f"round {r + 1}/{a.r}, {t} thread(s)", file=sys.stderr)
            rows, peak = run_marco(a.marco, a.model, a.p, a.n, t)
            collect(results, "marco", rows, t)
            rss.append(peak)
            collect(results, "llama.cpp", run_llama(llama, a.model, a.p, a.n, t), t)
    if a.busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for r in range(a.r):
                for t in threads:
                    print(f"busy neighbour round {r + 1}/{a.r}, {t} thread(s)", file=sys.stderr)
                    collect(results, "marco", run_marco(a.marco, a.model, 0, a.n, t)[0], t, "busy ")
                    collect(results, "llama.cpp", run_llama(llama, a.model, 0, a.n, t), t, "busy ")
        finally:
            spinner.kill()
    print_table(results)
    size = os.path.getsize(a.model)
    peak = max(x for x in rss if x)
    print(f"\nmarco peak RSS {peak / 1024:.0f} MiB (model file {size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
