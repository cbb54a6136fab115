#!/bin/sh
# CDNOW_master.txt (customer_id date number_of_cds dollar_value, whitespace-separated, one header
# line) → purchase events as JSON Lines for `nurture ingest` and `nurture backtest --events`:
#   {"id":"cdnow-1","email":"customer-00001@cdnow.example","type":"purchase",
#    "occurred_at":"1997-01-01T00:00:00Z","properties":{"amount":11.77,"cds":1}}
# Usage: sh rulesets/examples/cdnow-events.sh CDNOW_master.txt > cdnow-events.jsonl
# Each line's number makes its id, so converting the file again gives the same events.
exec awk 'NR > 1 && NF == 4 {
  printf "{\"id\":\"cdnow-%d\",\"email\":\"customer-%s@cdnow.example\",\"type\":\"purchase\",", NR - 1, $1
  printf "\"occurred_at\":\"%s-%s-%sT00:00:00Z\",", substr($2, 1, 4), substr($2, 5, 2), substr($2, 7, 2)
  printf "\"properties\":{\"amount\":%s,\"cds\":%d}}\n", $4, $3
}' "${1:-/dev/stdin}"
