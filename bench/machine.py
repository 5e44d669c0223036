"""Machine facts the benchmarks print with their figures."""
import platform


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
