#!/bin/sh
# Any number of beat replicas may run: the one holding the lease in the batchapp database sends
# the ticks, the others stand by (batchapp/beat.py). No pid file: replicas share /data, and a pid
# file there would stop every beat but the first, and outlive a killed container.
set -eu
exec celery -A batchapp beat -l INFO
