"""``styleprefs review``: curation by eye. A local page to browse a dataset's pairs, judge them (drop, flip,
keep) and see its rejects and quarantine; ``--apply`` writes the decisions into the dataset.

``decisions``: the append-only log ``DATASET/review.jsonl`` and its tally. ``reader``: rows of Parquet files read
a row group at a time. ``view``: the page's filters and sort. ``apply``: the decisions through the crash-safe swap.
``server``: the ASGI app and its static page.
"""
