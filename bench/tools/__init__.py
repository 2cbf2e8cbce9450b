"""Command-line tools beside the pipeline stages (each ``python -m bench.tools.NAME --help``):

    search.py          query a folder of images with a region, nearest regions from extracted shards
    visualize.py       pictures of regions and predictions
    random_weights.py  tiny random-weight checkpoints in the official formats, for smoke runs
"""
