"""acme_batch: a team's own batchapp jobs, in a package of its own.

- ``jobs.py``: ``acme.wordcount``, registered through the ``batchapp.jobs`` entry point;
- ``words.py``: the counting itself, plain Python, tested without batchapp running;
- ``samples.py``: a few small text files to count (``python -m acme_batch.samples DEST``).

Still to come, once batchapp has the APIs for them: ``imports.py`` (a declared CSV import) and
``schedules.py`` (a schedule entry).
"""
