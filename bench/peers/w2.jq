# W2 in jq: the transform's equivalent (ascii_downcase matches str.lower on these ASCII methods).
# usage: jq -c -f w2.jq EVENTS.ndjson
.method |= ascii_downcase
| .is_error = (.status >= 500)
| .route = (.path | split("?")[0])
