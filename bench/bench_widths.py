"""What input of varying shape costs the NDJSON reader: the field budget (stream/widths.py).

    python3 bench/bench_widths.py [--mib 1] [--limit-gb 4] [--out bench/out/widths.md]

Each shape is generated here (about --mib MiB of NDJSON), then read in a child process by
`stream.inputs.read_events` (one worker, as the HTTP ingest server reads a request) and, beside
it, by Arrow's `read_json` with type inference over the same bytes (what the reader used to hand
a whole chunk, and the floor for clean input). A child that goes past --limit-gb of resident
memory is stopped and reported as such: without the budget, Arrow's reader needs rows x fields
cells, and some shapes below need tens of GB. Reported: wall seconds, peak resident memory,
events kept, dead letters, and the widest table (leaf fields).

Shapes:
- clean: one schema (the W1 events of bench_pipeline.py);
- late field: one schema, and one field that first comes near the end;
- type change: an integer field holds a float every 1,000th line;
- kind change: an integer field holds a string every 1,000th line (Arrow refuses the chunk);
- new key per line: `{"<unique id>": 1}` (a request id used as a key);
- keys in turn: 1,000 keys, one per line, in turn (every key fits, every table is sparse);
- nested new keys: `{"m": {"<unique id>": 1}}`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from peers.events import generate  # noqa: E402 - the W1 events of bench_pipeline.py

CHILD = r'''
import io, json, os, resource, sys, threading, time
limit = int(sys.argv[3]) << 30
def watch():
    while True:
        with open("/proc/self/statm") as statm:
            if int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") > limit:
                os._exit(3)
        time.sleep(0.01)
threading.Thread(target=watch, daemon=True).start()
data = open(sys.argv[2], "rb").read()
import pyarrow.json as pa_json
from stream.inputs import read_events
from stream.widths import schema_leaves
started = time.perf_counter()  # imports are not timed
if sys.argv[1] == "logbus":
    kept = dead = widest = 0
    for batch in read_events(io.BytesIO(data), workers=1, gunzip=False):
        kept += batch.table.num_rows
        dead += len(batch.dead_letters)
        widest = max(widest, len(schema_leaves(batch.table.schema)))
    result = {"kept": kept, "dead": dead, "widest": widest}
else:
    try:
        table = pa_json.read_json(io.BytesIO(data), read_options=pa_json.ReadOptions(
            use_threads=False, block_size=len(data) + 1))
        result = {"kept": table.num_rows, "dead": 0, "widest": table.num_columns}
    except Exception as exc:
        result = {"refused": str(exc)[:60]}
result["seconds"] = time.perf_counter() - started
result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps(result))
'''


def shapes(nbytes: int, tmp: Path) -> dict[str, bytes]:
    generate(tmp / "clean.ndjson", nbytes // 210)
    clean = (tmp / "clean.ndjson").read_bytes()
    lines = clean.splitlines(keepends=True)
    late = [*lines[:-5], lines[-5].replace(b"{", b'{"late": 1, ', 1), *lines[-4:]]
    small = nbytes // 10

    def repeat(line: bytes, every: int, odd: bytes) -> bytes:
        return b"".join(odd if i % every == every - 1 else line for i in range(small))

    return {
        "clean": clean,
        "late field": b"".join(late),
        "type change": repeat(b'{"a":1}\n', 1000, b'{"a":1.5}\n'),
        "kind change": repeat(b'{"a":1}\n', 1000, b'{"a":"x"}\n'),
        "new key per line": b"".join(b'{"r%07d":1}\n' % i for i in range(nbytes // 15)),
        "keys in turn": b"".join(b'{"r%07d":1}\n' % (i % 1000) for i in range(nbytes // 15)),
        "nested new keys": b"".join(b'{"m":{"r%07d":1}}\n' % i for i in range(nbytes // 20)),
    }


def run(reader: str, path: Path, limit_gb: int) -> str:
    done = subprocess.run([sys.executable, "-c", CHILD, reader, str(path), str(limit_gb)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if done.returncode == 3:
        return f"stopped past {limit_gb} GB | | | |"
    if done.returncode != 0:
        return f"exit {done.returncode} | | | |"
    got = json.loads(done.stdout)
    if "refused" in got:
        return f"refused: {got['refused']} | {got['peak_mb']} | | |"
    return f"{got['seconds']:.3f} | {got['peak_mb']} | {got['kept']:,} | {got['dead']:,} | {got['widest']:,}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=1.0, help="size of each shape, MiB (1)")
    parser.add_argument("--limit-gb", type=int, default=4, help="stop a reader past this resident memory (4)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "widths.md")
    args = parser.parse_args()
    rows = ["| shape | bytes | reader | seconds | peak MB | kept | dead letters | widest |",
            "|---|---:|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in shapes(int(args.mib * (1 << 20)), Path(tmp)).items():
            path = Path(tmp) / "input.ndjson"
            path.write_bytes(data)
            for reader in ("logbus", "arrow"):
                label = "read_events" if reader == "logbus" else "Arrow read_json (inference)"
                rows.append(f"| {name} | {len(data):,} | {label} | {run(reader, path, args.limit_gb)} |")
                print(rows[-1], flush=True)
    command = " ".join(["python3", "bench/bench_widths.py", *sys.argv[1:]])
    args.out.write_text(f"`{command}`\n\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
