# W1 in jq, streaming: keep status >= 400, count and sum(bytes) per host per 60 s window.
# usage: jq -n -c -f w1.jq EVENTS.ndjson
# State is nested per host ({host: {window: [count, bytes]}}): one flat object keyed by
# "host|window" is ~7x slower at 400,000 events, as jq copies ever larger objects.
reduce (inputs | select(.status >= 400) | [.host, ((.ts / 60 | floor) * 60 | tostring), .bytes])
    as [$host, $window, $bytes] ({};
  .[$host][$window] |= (if . == null then [1, $bytes] else [.[0] + 1, .[1] + $bytes] end))
| to_entries[]
| .key as $host
| .value | to_entries[]
| {window: (.key | tonumber), host: $host, events: .value[0], bytes: .value[1]}
