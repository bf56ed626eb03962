"""Open-loop HTTP load generator (no coordinated omission): requests are scheduled at a fixed rate and
latency is measured from each request's scheduled start, over a pool of keep-alive connections.

  python bench/openloop.py --url http://127.0.0.1:8080/v1/score --body body.json --rate 500 \
      --seconds 20 [--header 'Authorization: Bearer x'] [--conns 32] [--bodies bodies.jsonl]
Prints one JSON line: sent, ok, errors by status, p50/p90/p99/p99.9/max in ms, achieved rate, and
p50/p99 of the accepted (200) and of the shed (503) answers separately.
Standard library only, so it runs under any Python here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


async def main_async(a):
    u = urlsplit(a.url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    bodies = []
    if a.bodies:
        with open(a.bodies) as f:
            bodies = [line.strip().encode() for line in f if line.strip()]
    else:
        with open(a.body, "rb") if a.body else open("/dev/null", "rb") as f:
            bodies = [f.read()]
    extra = "".join(f"{h}\r\n" for h in a.header)
    method = "POST" if bodies[0] else "GET"
    reqs = [
        (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    free: asyncio.Queue = asyncio.Queue()
    for _ in range(a.conns):
        free.put_nowait(None)
    lat, status = [], {}
    by_code: dict[int, list[float]] = {}
    interval = 1.0 / a.rate
    n = int(a.rate * a.seconds)
    start = time.perf_counter() + 0.2

    async def one(i, conn):
        sched = start + i * interval
        now = time.perf_counter()
        if sched > now:
            await asyncio.sleep(sched - now)
        try:
            if conn is None:
                conn = await asyncio.open_connection(host, port)
            r, w = conn
            w.write(reqs[i % len(reqs)])
            line = await r.readline()
            code = int(line.split()[1])
            clen, chunked = 0, False
            while True:
                h = await r.readline()
                if h in (b"\r\n", b""):
                    break
                k, _, v = h.decode().partition(":")
                if k.lower() == "content-length":
                    clen = int(v)
                if k.lower() == "transfer-encoding" and "chunked" in v.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await r.readline()).strip(), 16)
                    await r.readexactly(size + 2)
                    if size == 0:
                        break
            elif clen:
                await r.readexactly(clen)
            lat.append(time.perf_counter() - sched)
            by_code.setdefault(code, []).append(lat[-1])
            status[code] = status.get(code, 0) + 1
            free.put_nowait(conn)
        except Exception as e:  # connection problems count as errors; the slot reopens
            status[type(e).__name__] = status.get(type(e).__name__, 0) + 1
            free.put_nowait(None)

    tasks = []
    for i in range(n):
        conn = await free.get()
        tasks.append(asyncio.create_task(one(i, conn)))
    await asyncio.gather(*tasks)
    took = time.perf_counter() - start
    lat.sort()

    def q(p: float, values: list[float] | None = None) -> float | None:
        v = lat if values is None else sorted(values)
        return round(v[min(len(v) - 1, int(p * len(v)))] * 1000, 3) if v else None

    ok, shed = by_code.get(200, []), by_code.get(503, [])

    print(
        json.dumps(
            {
                "rate": a.rate,
                "sent": n,
                "status": status,
                "achieved_rps": round(len(lat) / took, 1),
                "p50_ms": q(0.50),
                "p90_ms": q(0.90),
                "p99_ms": q(0.99),
                "p999_ms": q(0.999),
                "max_ms": round(lat[-1] * 1000, 3) if lat else None,
                "ok_rps": round(len(ok) / took, 1),
                "ok_p50_ms": q(0.50, ok),
                "ok_p99_ms": q(0.99, ok),
                "shed_share": round(len(shed) / max(1, len(lat)), 4),
                "shed_p50_ms": q(0.50, shed),
                "shed_p99_ms": q(0.99, shed),
            }
        )
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body")
    ap.add_argument("--bodies")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", type=int, default=32)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
