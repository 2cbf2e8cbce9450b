"""One-shot object retrieval (the paper's Table 8): queries, the region index, metrics and the evaluation stage.

    queries.py   ground-truth query objects of a split, saved once and shared by every method
    index.py     FAISS indexes over region vectors (exact flat, or IVF-PQ)
    metrics.py   pure ranking metrics (AP, precision@k) and their summary
    evaluate.py  the stage: extract queries and database, search, score (``python -m bench.retrieval``)
"""
