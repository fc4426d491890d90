"""Data: GLUE tasks and the users' own files → splits → tokenised batches.

``tasks`` describes each task, ``sources`` reads examples, ``splits`` carves train / validation / test,
``batches`` tokenises and pads. The package imports none of them itself, so that ``zoft.config`` can use
``tasks`` while ``splits`` uses ``zoft.config``; importing ``tasks`` imports neither torch nor transformers.
"""
