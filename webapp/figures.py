"""Benchmark figures the app's help quotes: measured once, written here once, checked against the README's tables
(`tests/test_newcomer.py`), so the help and the documentation cannot drift apart.

Each figure names the benchmark that measures it; after re-running one, update it here and in the README together.
"""

from __future__ import annotations

# benchmarks/frontier.py on the plates, YOLOv8s fall base, one run, 10 epochs at 320 px (README: "Head shapes")
MAP50_HEAD = 0.642
MAP50_P3_LAST_NARROW = 0.857
MAP50_P3_NARROW = 0.870
MAP50_NECK = 0.848
MAP50_FINETUNE = 0.844
BENCH_EPOCHS = 10
BENCH_IMGSZ = 320
# head files, fp16 safetensors (the shipped plate heads)
HEAD_MB = 4.2
P3_LAST_NARROW_MB = 2.2
P3_NARROW_MB = 3.4
NECK_MB = 12.2
# benchmarks/merge_latency.py --rounds 30: merged latency / base (CPU, 1 thread, batch 1, 640 px, bus.jpg), the
# shipped heads (README: "Merge latency")
LATENCY_HEAD = 1.18
LATENCY_P3_LAST_NARROW = 1.20
LATENCY_P3_NARROW = 1.28
LATENCY_NECK = 1.53
