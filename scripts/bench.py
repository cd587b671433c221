#!/usr/bin/env python3
"""scripts/bench's driver: starts `sandbox` (the stand-ins, in a process of their own), runs the release binary
and the incumbent's architecture (scripts/incumbent.py) against it, measures each run as a child process
(wall and CPU seconds, peak RSS from wait4), and prints one table.

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
            result, cpus = {}, {}

            def row(what, argv, floor=None, baseline=None):
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
                result[what] = wall
                cpus[what] = cpu
                rows.append((label, what, wall, cpu, rss, fetched / wall, sent,
                             wall / result[floor] if floor else None, baseline, None))

            row("dry run (floor)", ours("api", "--dry-run"))
            row("full, relay", ours("relay"), floor="dry run (floor)")
            row("full, Lookups API", ours("api"), floor="dry run (floor)")
            incumbent = [python, os.path.join(HERE, "incumbent.py"), "--relay", sandbox.relay, "--cert", sandbox.cert,
                         "--key", sandbox.key, "--chain", sandbox.chain, "--lookup", "bench_incumbent",
                         "--collection", "Devo Export"]
            row("incumbent (Python)", incumbent)
            base, base_cpu = result["incumbent (Python)"], cpus["incumbent (Python)"]
            for i, r in enumerate(rows):
                if r[0] == label and r[1].startswith("full"):
                    rows[i] = r[:8] + (base / r[2], base_cpu / r[3])
            sandbox.command("change 1")
            measure(ours("api", "--dry-run"), env)  # the change made the stand-in's index stale: rebuild it
            row("dry run, after a 1% change", ours("api", "--dry-run"))
            row("1% change, Lookups API", ours("api"), floor="dry run, after a 1% change")
            row("1% change, relay", ours("relay"), floor="dry run, after a 1% change")
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
    print("| ThreatQ | run | wall s | CPU s | peak RSS MiB | IOCs/s | rows sent | ours/floor | baseline/ours "
          "| baseline CPU/ours |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for label, what, wall, cpu, rss, rate, sent, floor, base, base_cpu in rows:
        print(f"| {label} | {what} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {rate:,.0f} | {sent:,} | "
              f"{fmt(floor, '.2f')} | {fmt(base, '.1f')} | {fmt(base_cpu, '.1f')} |")


if __name__ == "__main__":
    main()
