"""acme_batch: a team's own batchapp jobs, in a package of its own.

- ``jobs.py``: ``acme.wordcount``, registered through the ``batchapp.jobs`` entry point;
- ``words.py``: the counting itself, plain Python, tested without batchapp running;
- ``imports.py``: ``acme.stock``, a stock count CSV into the table ``acme_stock``, declared;
- ``schedules.py``: ``acme.stock_value``, the stock's value, on a schedule declared in code;
- ``samples.py``: a few small text files to count (``python -m acme_batch.samples DEST``).
"""
