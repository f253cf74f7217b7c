#!/usr/bin/env bash
# timed.sh LABEL COMMAND...: run COMMAND, then print how long it took, so every CI log shows the
# cost of each step and suite (cold and warm alike). Exits with COMMAND's status.
set -uo pipefail
usage="usage: $0 LABEL COMMAND [ARG...]   (prints 'time: LABEL took N s' when COMMAND ends)"
case "${1:-}" in -h | --help) echo "$usage"; exit 0 ;; esac
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
label=$1
shift
start=$(date +%s)
"$@"
status=$?
printf 'time: %s took %d s%s\n' "$label" "$(($(date +%s) - start))" \
  "$([ $status -eq 0 ] || echo " (failed, exit $status)")"
exit $status
