#!/bin/sh
# Visor container entrypoint: the first argument picks the role.
#
#   api                 gunicorn on 0.0.0.0:$PORT (GUNICORN_WORKERS, GUNICORN_THREADS, GUNICORN_TIMEOUT)
#   worker [QUEUES]     celery worker on QUEUES (default $CELERY_QUEUES, else all four), prefetch 1
#   beat                celery beat (run exactly one)
#   migrate             manage.py migrate, then exit (a one-shot Job / compose service)
#   manage ARGS...      any manage.py command, e.g. `manage create_tenant --name Acme --json`
#   anything else       executed as given (e.g. `python -c ...`, `sh`)
set -eu

role="${1:-api}"
[ "$#" -gt 0 ] && shift

case "$role" in
  api)
    exec gunicorn infra.wsgi \
      --bind "0.0.0.0:${PORT:-8000}" \
      --workers "${GUNICORN_WORKERS:-2}" \
      --threads "${GUNICORN_THREADS:-4}" \
      --timeout "${GUNICORN_TIMEOUT:-60}" \
      --graceful-timeout "${GUNICORN_GRACEFUL_TIMEOUT:-30}" \
      --keep-alive "${GUNICORN_KEEPALIVE:-5}" \
      --worker-tmp-dir "${GUNICORN_WORKER_TMP_DIR:-/tmp}" \
      --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-*}" \
      --access-logfile - \
      "$@"
    ;;
  worker)
    queues="${1:-${CELERY_QUEUES:-enrollment,identify,maintenance,webhooks}}"
    [ "$#" -gt 0 ] && shift
    # Prefetch 1 + acks_late (infra/settings.py): a worker holds at most one unacknowledged message per
    # process, and a task interrupted by SIGKILL or OOM is redelivered (reject_on_worker_lost).
    exec celery -A infra worker \
      -Q "$queues" \
      --prefetch-multiplier=1 \
      --concurrency "${CELERY_CONCURRENCY:-2}" \
      --hostname "${CELERY_HOSTNAME:-${queues%%,*}@%h}" \
      --loglevel "${LOG_LEVEL:-INFO}" \
      --without-gossip --without-mingle \
      "$@"
    ;;
  beat)
    exec celery -A infra beat \
      --schedule "${CELERY_BEAT_SCHEDULE:-/tmp/celerybeat-schedule}" \
      --loglevel "${LOG_LEVEL:-INFO}" \
      "$@"
    ;;
  migrate)
    python manage.py migrate --no-input "$@"
    exec python manage.py check --deploy --fail-level ERROR
    ;;
  manage)
    exec python manage.py "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
