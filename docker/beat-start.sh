#!/bin/sh
# Beat refuses to start while a pid file from a killed container is still on the volume.
set -eu
rm -f /data/celerybeat.pid
exec celery -A batchapp beat -l INFO --pidfile=/data/celerybeat.pid
