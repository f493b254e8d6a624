import os

from hypothesis import HealthCheck, settings

# "default": the same examples on every run (derandomized), so that `make test` passes or fails reproducibly;
# "ci": more of them; "explore": fresh random examples every run, to hunt for counterexamples
# (HYPOTHESIS_PROFILE=explore make test) — a failure found there becomes a regression test.
_quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("default", deadline=None, max_examples=25, derandomize=True, suppress_health_check=_quiet)
settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True, suppress_health_check=_quiet)
settings.register_profile("explore", deadline=None, max_examples=100, suppress_health_check=_quiet)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "default"))

# pytest-xdist runs one process per worker; torch's default of one intra-op thread per core in each of them
# oversubscribes the CPU (on 2 cores, 2 workers x 2 threads ran the suite 2.3x slower). Share the cores instead.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))
