"""Machine facts the benchmarks print with their figures."""
import platform


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# The feature set of scripts/test's build (the cluster included), so that a benchmark compiles nothing twice.
BUILD = ["cargo", "build", "--release", "-q", "--workspace", "--features", "verger/cluster,verger-python/cluster",
         "--bins", "--examples"]


def build(root):
    """Builds the binaries and examples the benchmarks run (the inference floor is an example)."""
    import subprocess
    subprocess.run(BUILD, cwd=root, check=True)
