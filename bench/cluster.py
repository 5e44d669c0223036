"""verger run on a Ballista cluster with 1, 2 and 4 executors (one task slot each), same images, each host in
a network namespace of its own.

usage: .venv/bin/python bench/cluster.py [--input DIR] [--limit N] [--executors 1,2,4] [--loopback]

As root (the default), the scheduler, each executor and the client each get a Linux network namespace on a
private bridge (veth pairs, addresses only inside the namespaces; removed at the end), and the cluster is
secured with `verger cluster init`'s credentials, as separate hosts would be; the images, model and output
are on this machine's disk, which every namespace shares (a shared folder). `--loopback` runs every process
on 127.0.0.1 instead. Each executor has one task slot and one inference thread, so on this 2-core machine
one executor uses one core, two use both, and four share them.

Prints, for each executor count, the run's wall time and images/s, and the client's own CPU seconds per
image (its rusage, from wait4: listing, planning and submitting jobs, reading staged features for PCA,
commits), which shows whether the client would become the bottleneck with more executors.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench import target_dir  # noqa: E402
from machine import build, cpu_model  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
PORT = 26000
SUBNET = "10.214.7"


class Hosts:
    """Where each process runs: a namespace per host on a bridge, or 127.0.0.1 for all."""

    def __init__(self, count, loopback):
        self.count, self.loopback = count, loopback
        self.tag = f"vb{os.getpid() % 1000}"
        if loopback:
            return
        self.remove()
        try:
            self.create()
        except subprocess.CalledProcessError as e:
            self.remove()
            sys.exit(f"{' '.join(e.cmd)}: {e.stderr.decode().strip()}")

    def create(self):
        self.ip("link", "add", f"{self.tag}br", "type", "bridge")
        self.ip("link", "set", f"{self.tag}br", "up")
        for h in range(self.count):
            ns, outside, inside = self.ns(h), f"{self.tag}h{h}", f"{self.tag}n{h}"
            self.ip("netns", "add", ns)
            self.ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self.ip("link", "set", outside, "master", f"{self.tag}br")
            self.ip("link", "set", outside, "up")
            self.ip("link", "set", inside, "netns", ns)
            self.ip("-n", ns, "link", "set", inside, "name", "eth0")
            self.ip("-n", ns, "addr", "add", f"{self.addr(h)}/24", "dev", "eth0")
            self.ip("-n", ns, "link", "set", "eth0", "up")
            self.ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def ns(self, host):
        return f"{self.tag}-{host}"

    def addr(self, host):
        return "127.0.0.1" if self.loopback else f"{SUBNET}.{host + 2}"

    def command(self, host, args):
        return args if self.loopback else ["ip", "netns", "exec", self.ns(host), *args]

    def port(self, host, port):
        # On loopback every process shares the ports: spread them.
        return port + 4 * host if self.loopback else port

    def wait(self, host, port, log):
        probe = self.command(0, ["bash", "-c", f"exec 3<>/dev/tcp/{self.addr(host)}/{port}"])
        deadline = time.time() + 60
        while subprocess.run(probe, capture_output=True).returncode != 0:
            if time.time() > deadline:
                sys.exit(f"{self.addr(host)}:{port} did not listen: {open(log).read()[-2000:]}")
            time.sleep(0.2)

    def remove(self):
        if self.loopback:
            return
        for h in range(self.count):
            subprocess.run(["ip", "netns", "del", self.ns(h)], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{self.tag}h{h}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{self.tag}br"], capture_output=True)


def run_with(verger, executors, images, work, loopback):
    # Host 0 the scheduler, 1 the client, then the executors.
    hosts = Hosts(executors + 2, loopback)
    security = [] if loopback else ["--security", os.path.join(work, "credentials")]
    processes = []
    try:
        log = os.path.join(work, f"scheduler-{executors}.log")
        scheduler_port = hosts.port(0, PORT)
        processes.append(subprocess.Popen(
            hosts.command(0, [verger, "scheduler", "--bind", hosts.addr(0), "--port", str(scheduler_port),
                              *security]), stdout=subprocess.DEVNULL, stderr=open(log, "w")))
        hosts.wait(0, scheduler_port, log)
        for i in range(executors):
            host, log = i + 2, os.path.join(work, f"executor-{executors}-{i}.log")
            port = hosts.port(host, PORT + 2)
            processes.append(subprocess.Popen(
                hosts.command(host, [verger, "executor", "--scheduler", f"{hosts.addr(0)}:{scheduler_port}",
                                     "--bind", hosts.addr(host), "--port", str(port), "--slots", "1",
                                     "--work-dir", os.path.join(work, f"executor-{executors}-{i}"), *security]),
                stdout=subprocess.DEVNULL, stderr=open(log, "w")))
            hosts.wait(host, port, log)
        time.sleep(2)  # registration: the first poll of each executor
        output = os.path.join(work, f"out-{executors}")
        started = time.perf_counter()
        client = subprocess.Popen(
            hosts.command(1, [verger, "run", "--input", images, "--output", output, "--cluster",
                              f"df://{hosts.addr(0)}:{scheduler_port}", "--partition-rows", "64",
                              "--threads", "1", *security]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait4: the client's own CPU (`ip netns exec` execs it, so this is the verger process).
        _, status, usage = os.wait4(client.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) not in (0, 3):
            sys.exit(f"verger run --cluster failed:\n{client.stderr.read().decode()[-3000:]}")
        report = json.load(open(os.path.join(output, "report.json")))
        return wall, report["counts"]["featurized"], usage.ru_utime + usage.ru_stime
    finally:
        for p in processes:
            p.kill()
            p.wait()
        hosts.remove()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=os.path.join(SHARED, "datasets/fruits360/Training"))
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--executors", default="1,2,4")
    ap.add_argument("--loopback", action="store_true")
    args = ap.parse_args()
    loopback = args.loopback or os.geteuid() != 0
    if loopback and not args.loopback:
        print("not root: every process on 127.0.0.1 instead of network namespaces")
    build(ROOT)
    verger = os.path.join(target_dir(), "release", "verger")
    work = tempfile.mkdtemp(prefix="verger-cluster-bench-")
    try:
        if not loopback:
            subprocess.run([verger, "cluster", "init", os.path.join(work, "credentials")], check=True,
                           capture_output=True)
        images = os.path.join(work, "images")
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(args.input) for f in names if f.endswith(".jpg"))
        for f in files[:: max(1, len(files) // args.limit)][: args.limit]:
            target = os.path.join(images, os.path.basename(os.path.dirname(f)))
            os.makedirs(target, exist_ok=True)
            shutil.copy(f, target)
        counts = [int(n) for n in args.executors.split(",")]
        results = {n: run_with(verger, n, images, work, loopback) for n in counts}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    where = "127.0.0.1" if loopback else "a network namespace per host, secured"
    print(f"{os.cpu_count()} cores, {cpu_model()}; {where}")
    print(f"{'executors':>9} {'wall s':>8} {'images/s':>9} {'client CPU ms/image':>20}")
    for n, (wall, count, cpu) in results.items():
        print(f"{n:>9} {wall:8.1f} {count / wall:9.1f} {1000 * cpu / count:20.2f}")
    first = counts[0]
    for n in counts[1:]:
        print(f"speed-up with {n} executors over {first}: {results[first][0] / results[n][0]:.2f}x "
              f"({os.cpu_count()} cores bound it)")


if __name__ == "__main__":
    main()
