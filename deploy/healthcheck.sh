#!/bin/sh
# Docker HEALTHCHECK of the agentos-metrics image, which holds both services: runs the
# `healthcheck` subcommand of the service this container runs (it GETs that service's admin
# `/readyz`, reading the same METRICS_* settings as the service). The process is found in /proc,
# so it works whether the service is PID 1 or runs under an init (`docker run --init`).
# A `metrics-ingest migrate` container has no admin listener: it counts as healthy while it works.
set -eu

self=$$
for cmdline in /proc/[0-9]*/cmdline; do
    pid=${cmdline#/proc/}
    pid=${pid%/cmdline}
    [ "$pid" = "$self" ] && continue
    # The arguments are NUL-separated; a process may have exited since the glob.
    argv=$(tr '\0' ' ' <"$cmdline" 2>/dev/null) || continue
    # Split the arguments on spaces without expanding any `*` in them (the loop's own glob is
    # already expanded).
    set -f
    for word in $argv; do
        case ${word##*/} in
            metrics-ingest)
                case " $argv " in
                    *" healthcheck "*) continue 2 ;;
                    *" migrate "*) exit 0 ;;
                esac
                exec /usr/local/bin/metrics-ingest healthcheck
                ;;
            metrics-query)
                case " $argv " in
                    *" healthcheck "*) continue 2 ;;
                esac
                exec /usr/local/bin/metrics-query healthcheck
                ;;
        esac
    done
done
echo "metrics-healthcheck: neither metrics-ingest nor metrics-query is running" >&2
exit 1
