"""Generate schemas/clickhouse/004_error_codes.sql from the seed's error-code tables (run once)."""
import re, sys
from pathlib import Path

SEED = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "tests" / "data" / "seeds" / "003_951e7e4425c9114a.txt"
HEADER = re.compile(r"^(Code\s*Description|Error\s*Description)$")
ROW = re.compile(r"^(\d{4})\s*(\S.*?)\s*$")
GENERIC = {"Error Codes / Exceptions", "Error Codes"}
HEADING = re.compile(r"^[A-Z][A-Za-z /]*[A-Za-z]$")

def is_heading(lines, i):
    line = lines[i]
    if not HEADING.match(line) or len(line) > 40 or line in GENERIC:
        return False
    before = lines[i - 1].strip() if i > 0 else ""
    after = lines[i + 1].strip() if i + 1 < len(lines) else ""
    return before == "" and after == ""

def parse(text):
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not HEADER.match(line.strip()):
            continue
        j = i - 1
        while not is_heading(lines, j):
            j -= 1
        op = lines[j].strip()
        k = i + 1
        while k < len(lines) and (m := ROW.match(lines[k])):
            out.append((int(m.group(1)), op, m.group(2)))
            k += 1
    return out

def q(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

rows = parse(SEED.read_text(encoding="utf-8"))
for r in rows: print(r, file=sys.stderr)
print(len(rows), "rows", len({r[1] for r in rows}), "operations", file=sys.stderr)
values = ",\n".join(f"    ({c}, {q(o)}, {q(d)})" for c, o, d in rows)
print(f"""-- 004: the live-recording / streaming error-code catalogue, one row per row of the tables in the
-- EnableX recording document (seeds/003_951e7e4425c9114a.txt): {len(rows)} rows under {len({r[1] for r in rows})} operations.
-- Generated once from that document (the product never reads the seed at run time); the operation is the
-- heading each table is listed under, so 7000 appears once per operation (three times under Generic Error,
-- with three descriptions). Idempotent: only rows not already present are inserted.
INSERT INTO enablex.error_codes (code, operation, description)
SELECT code, operation, description
FROM values('code UInt16, operation String, description String',
{values}
)
WHERE (code, operation, description) NOT IN (SELECT code, operation, description FROM enablex.error_codes);""")
