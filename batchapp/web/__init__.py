"""``batchapp web``: the jobs, the schedule and the workers in a browser (docs/web.md).

Needs the ``web`` extra (``pip install "batchapp[web]"``). ``app.py`` builds the Starlette app,
``pages.py`` and ``api.py`` render what :mod:`batchapp.service` returns, ``auth.py`` and
``csrf.py`` guard it, ``passwords.py`` makes and checks the ``BATCHAPP_WEB_USERS`` hashes,
``metrics.py`` renders ``/metrics`` for Prometheus (docs/metrics.md).
"""
