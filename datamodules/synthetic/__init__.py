"""RegionBench's built-in mini datasets, each written in a real dataset's on-disk layout so that the
real reader (``datamodules/<layout>.py``) reads it exactly like the download:

    minivoc.py    Pascal VOC 2012 (semantic segmentation)
    miniade.py    ADE20K SceneParsing (150 classes)
    minicoco.py   COCO instances (one-shot retrieval)
"""
