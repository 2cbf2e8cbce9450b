"""Benchmarks of RegionBench's hot paths against literal reference implementations.

    make bench            # = python -m benchmarks.run; prints one table, writes results/bench/bench.json

One module per hot path, each holding the slow, obvious implementation it is compared with:

    pooling.py     average and max pooling of patch features into regions
    sam_slic.py    the SAM+SLIC merge
    painting.py    region probabilities -> pixel predictions -> confusion-matrix update
    shards.py      streaming region shards through the DataModule vs reading the same bytes raw
    slic.py        fast-slic vs scikit-image SLIC
    throughput.py  decoder training (regions/s) and extraction (images/s, per stage)
    post_pooling.py  extraction's CPU work after pooling (histogram, RLEs, sample encoding) vs the
                   pre-issue-17 code, same bytes

Shared pieces: inputs.py (synthetic inputs at ADE20K, VOC and 1024x1024 sizes), measure.py
(median timing, peak extra memory read from the kernel), memory.py (the child process that
measures memory), run.py (the table).
"""
