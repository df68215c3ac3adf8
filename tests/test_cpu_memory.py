"""Freed CPU memory stays in the process: a step that allocates and frees multi-megabyte tensors
faults no fresh pages in once `keep_freed_memory` is set (glibc)."""

import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from pipeline.train.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.randn(9000, 64)
def step():  # the shape of a graph model's step: tables of 1.5-2.5 MB made and dropped out of order
    a = torch.zeros(9000, 64); b = a + x; c = b * 2; d = torch.zeros(6000, 64)
    del a
    e = c + 1
    del b, c
    e.sum()
    del d, e
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode):
    r = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_stops_page_faults_between_steps():
    default, kept = page_faults("default"), page_faults("keep")
    # glibc's defaults fault a few pages per step here (2781 over 50 steps on the dev machine)
    assert kept <= max(20, default // 10), (default, kept)
