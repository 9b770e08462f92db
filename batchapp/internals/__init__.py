"""Every private or undocumented attribute of Celery, kombu and py-amqp that batchapp uses.

Nothing outside this package touches one. Each use carries a comment naming the public
behaviour it stands in for; :mod:`batchapp.internals.contract` lists what each needs, the app
refuses to start when one no longer fits, and the versions are pinned below the next minor
release (docs/internals.md says why each hook stays and how to move a pin).

- :mod:`.channel`: a confirm-mode channel whose publishes do not wait for their confirm, and
  a socket timeout for py-amqp's unbounded waits.
- :mod:`.task_messages`: a task's message built once and copied per chunk.
- :mod:`.result`: a result that settles its publish's confirm before it is read.
- :mod:`.result_backend`: Celery's database backend with one-statement stores and reads.
- :mod:`.delays`: Celery's native delayed delivery declared by a caller.
- :mod:`.consumer`: the worker's consumer with the message guard and failover hooks.
- :mod:`.clock`: beat's Celery app read on the database's clock.
"""
