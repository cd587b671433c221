#!/usr/bin/env python3
"""scripts/bench's driver: starts `sandbox` (the stand-ins, in a process of their own), runs the release binary
and the incumbent's architecture (scripts/incumbent.py) against it, measures each run as a child process
(wall and CPU seconds, peak RSS from wait4), and prints one table. Runs of under a few seconds are repeated and
each figure is the median of the repeats (see `repeats`): one run of 0.3 s on a shared 2-core machine can be off
by a third.

Usage: bench.py BINARY PYTHON SIZE... (IOCs the ThreatQ stand-in holds; about two in five are in the collection)
"""
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LATENCIES = ["0", "250"]


class Sandbox:
    def __init__(self, binary, iocs, latency):
        self.proc = subprocess.Popen([binary, "sandbox", "--iocs", str(iocs), "--page-latency", latency],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.env = {}
        for line in self.proc.stdout:
            if m := re.match(r"\s+export (\w+)=(.*)", line):
                self.env[m[1]] = m[2]
            elif m := re.search(r"Devo relay\s+(\S+)\s+\(client certificate, key and CA: (\S+) (\S+) (\S+)\)", line):
                self.relay, self.cert, self.key, self.chain = m[1], m[2], m[3], m[4]
            elif line.startswith("The UI form is filled"):
                break
        if "THREATQ_HOST" not in self.env:
            sys.exit("bench: the sandbox did not start (is port 8443 or 8444 taken?)")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        for answer in self.proc.stdout:
            if answer.startswith("ok"):
                return answer.strip()
            if answer.startswith("error"):
                sys.exit(f"bench: sandbox: {line}: {answer.strip()}")
        sys.exit("bench: the sandbox stopped")

    def stop(self):
        self.proc.send_signal(2)
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def measure(argv, env):
    """Runs argv; returns (wall s, CPU s, peak RSS MiB, stdout) of that process alone."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if proc.returncode != 0:
            sys.exit(f"bench: {' '.join(argv)} exited {proc.returncode}:\n{text}\n{err.read().decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def repeats(iocs, latency):
    """How many times each row is measured: 5 for 100k IOCs answered instantly, 3 at 250 ms a page, once at 1M."""
    if iocs > 200_000:
        return 1
    return 5 if latency == "0" else 3


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def last_run(config, name):
    with open(os.path.join(config, f"{name}.last-run.json")) as f:
        return json.load(f)["summary"]


def bench_size(binary, python, iocs, rows):
    sandbox = Sandbox(binary, iocs, LATENCIES[0])
    try:
        for latency in LATENCIES:
            sandbox.command(f"latency {latency}")
            config = tempfile.mkdtemp(prefix=f"tq-bench-{iocs}-{latency}-")
            # The relay pauses as little as the incumbent's Lookup (delay 0); Lookups API jobs are polled as by
            # default (0.05 s, doubling).
            env = dict(os.environ, **sandbox.env, DEVO_RELAY_DELAY_SECONDS="0")
            ours = lambda name, *extra: [binary, "-c", config, "-ll", config, "-v1", "-n", name, *extra]  # noqa: E731
            for name, method in (("relay", "relay"), ("api", "lookups-api")):
                measure(ours(name), env)  # registers the connector
                sandbox.command(f"configure {name} {method} bench_{name} batch_size=1000 parallel_page_requests=4")
            measure(ours("api", "--dry-run"), env)  # warms the stand-in's index of the collection
            label = f"{iocs // 1000}k IOCs, {latency} ms/page"
            n = repeats(iocs, latency)
            runs = {}  # what -> [(wall, cpu, rss, fetched, sent)]

            def run(what, argv):
                if argv[0] == binary and "--dry-run" not in argv and what.startswith("full"):
                    # A full export is the first run of an instance: no delivered state.
                    name = argv[argv.index("-n") + 1]
                    for leftover in (f"{name}.state", f"{name}.state.pending"):
                        if os.path.exists(os.path.join(config, leftover)):
                            os.remove(os.path.join(config, leftover))
                wall, cpu, rss, out = measure(argv, env)
                if argv[0] == binary and "--dry-run" not in argv:
                    summary = last_run(config, argv[argv.index("-n") + 1])
                    fetched, sent = summary["fetched"], summary["sent"]
                elif argv[0] == binary:
                    fetched = int(re.search(r"fetched (\d+)", out)[1])
                    sent = 0
                else:
                    fetched = int(re.search(r"fetched (\d+)", out)[1])
                    sent = int(re.search(r"unique (\d+)", out)[1])
                runs.setdefault(what, []).append((wall, cpu, rss, fetched, sent))

            def figures(what):
                """Median wall, CPU and RSS of a row's runs; its IOCs/s from the median wall."""
                measured = runs[what]
                wall = median([m[0] for m in measured])
                return wall, median([m[1] for m in measured]), median([m[2] for m in measured]), \
                    measured[0][3] / wall, measured[0][4]

            incumbent = [python, os.path.join(HERE, "incumbent.py"), "--relay", sandbox.relay, "--cert", sandbox.cert,
                         "--key", sandbox.key, "--chain", sandbox.chain, "--lookup", "bench_incumbent",
                         "--collection", "Devo Export"]
            for _ in range(n):
                run("dry run (floor)", ours("api", "--dry-run"))
                run("full, relay", ours("relay"))
                run("full, Lookups API", ours("api"))
                run("incumbent (Python)", incumbent)
            for _ in range(n):
                sandbox.command("change 1")
                measure(ours("api", "--dry-run"), env)  # the change made the stand-in's index stale: rebuild it
                run("dry run, after a 1% change", ours("api", "--dry-run"))
                run("1% change, Lookups API", ours("api"))
                run("1% change, relay", ours("relay"))
            floor = {"full": "dry run (floor)", "1% change": "dry run, after a 1% change"}
            base_wall, base_cpu = figures("incumbent (Python)")[:2]
            for what in runs:
                wall, cpu, rss, rate, sent = figures(what)
                kind = what.split(",")[0]
                ratio = wall / figures(floor[kind])[0] if kind in floor else None
                full = kind == "full"
                rows.append((label, what, n, wall, cpu, rss, rate, sent, ratio,
                             base_wall / wall if full else None, base_cpu / cpu if full else None))
    finally:
        sandbox.stop()


def main():
    binary, python, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
    rows = []
    for iocs in sizes:
        bench_size(binary, python, iocs, rows)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| ThreatQ | run | runs | wall s | CPU s | peak RSS MiB | IOCs/s | rows sent | ours/floor | baseline/ours "
          "| baseline CPU/ours |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for label, what, n, wall, cpu, rss, rate, sent, floor, base, base_cpu in rows:
        print(f"| {label} | {what} | {n} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {rate:,.0f} | {sent:,} | "
              f"{fmt(floor, '.2f')} | {fmt(base, '.1f')} | {fmt(base_cpu, '.1f')} |")


if __name__ == "__main__":
    main()
