#!/usr/bin/env python3
"""Anonymous connection flood against a running Lanyard CA (scripts/bench-starvation.sh).

Opens anonymous TLS connections in steps (e.g. 1000, 4000, 8300, 12000 in all), spread over
source addresses in 127.0.0.0/8 (a real flood comes from many addresses, and the server caps
connections per address), each holding a trust-bundle long poll. After each step, while
every connection opened so far is still open, a cell issues one instance certificate and an
operator lists the authorities, with curl over mutual TLS. Prints one line per step and a
last line with the largest number of anonymous connections under which the cell was served.

Only 127.0.0.0/8 is ever contacted.
"""

import argparse
import asyncio
import json
import ssl
import subprocess
import time
import uuid


def curl(args, timeout):
    """Runs curl; answers (HTTP status or 0, seconds)."""
    start = time.monotonic()
    p = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout)]
        + args,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - start
    try:
        return int(p.stdout.strip() or 0), took
    except ValueError:
        return 0, took


async def hold(host, port, ctx, addr, seq, held, answered, refused, stop):
    """One anonymous connection asking for a long poll, kept open until `stop`. Counted as
    held (no answer within two seconds), answered at once (the server did not hold it: its
    long-poll or connection budget was full), or refused (no TLS connection)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=ctx, local_addr=(addr, 0), server_hostname=host
            ),
            timeout=60,
        )
    except Exception:
        refused.append(1)
        return
    try:
        writer.write(
            (
                f"GET /v1/trust-bundle?wait=300 HTTP/1.1\r\nHost: {host}\r\n"
                f'If-None-Match: "{seq}"\r\n\r\n'
            ).encode()
        )
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(1), timeout=2)
            answered.append(1)
        except asyncio.TimeoutError:
            held.append(1)
        await stop.wait()
    except Exception:
        refused.append(1)
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--cell-cert", required=True)
    ap.add_argument("--cell-key", required=True)
    ap.add_argument("--csr", required=True, help="a CSR (PEM) for the cell's issuance")
    ap.add_argument("--operator-dir", required=True)
    ap.add_argument("--steps", default="1000,4000,8300,9400")
    ap.add_argument("--per-address", type=int, default=200)
    a = ap.parse_args()

    host, port = a.url.removeprefix("https://").rsplit(":", 1)
    port = int(port)
    ctx = ssl.create_default_context(cafile=a.bundle)
    csr = open(a.csr).read()
    seq_out = subprocess.run(
        ["curl", "-sS", "--cacert", a.bundle, "-H", "Accept: application/json",
         f"{a.url}/v1/trust-bundle"],
        capture_output=True, text=True, check=True,
    ).stdout
    seq = json.loads(seq_out)["spiffe_sequence"]

    held, answered, refused, stop, tasks = [], [], [], asyncio.Event(), []
    opened = 0
    best = 0
    for target in [int(s) for s in a.steps.split(",")]:
        while opened < target:
            n = opened // a.per_address
            addr = f"127.{10 + n // 250}.{n % 250}.{1 + opened % 200}"
            tasks.append(asyncio.create_task(hold(host, port, ctx, addr, seq, held, answered, refused, stop)))
            opened += 1
            if opened % 200 == 0:
                await asyncio.sleep(0.05)
        # Let the handshakes finish (or fail) before measuring.
        deadline = time.monotonic() + 120
        while len(held) + len(answered) + len(refused) < opened and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        body = json.dumps({
            "csr": csr,
            "instance_guid": str(uuid.uuid4()),
            "app_guid": str(uuid.uuid4()),
            "space_guid": str(uuid.uuid4()),
            "organization_guid": str(uuid.uuid4()),
        })
        cell_status, cell_s = await asyncio.to_thread(
            curl,
            ["--cacert", a.bundle, "--cert", a.cell_cert, "--key", a.cell_key,
             "-H", "Content-Type: application/json", "--data", body,
             f"{a.url}/v1/instance-certificates"],
            30,
        )
        op_status, op_s = await asyncio.to_thread(
            curl,
            ["--cacert", a.bundle, "--cert", f"{a.operator_dir}/cert.pem",
             "--key", f"{a.operator_dir}/key.pem", f"{a.url}/v1/authorities"],
            30,
        )
        served = cell_status == 201 and op_status == 200
        if served:
            best = opened
        print(
            f"anonymous connections opened {opened}: long polls held {len(held)}, answered at once "
            f"{len(answered)}, refused {len(refused)}; "
            f"cell issuance {cell_status} in {cell_s * 1000:.0f} ms, "
            f"operator list {op_status} in {op_s * 1000:.0f} ms",
            flush=True,
        )
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"largest flood under which a cell and an operator were served: {best} anonymous connections")


asyncio.run(main())
