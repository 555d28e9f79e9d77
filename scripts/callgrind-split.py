#!/usr/bin/env python3
"""Where one iteration's instructions go, from two callgrind runs of the same workload with
N1 and N2 iterations: inclusive counts per function (all threads), N2 minus N1, divided by
the difference. Prints the top functions and a few named groups.

    scripts/callgrind-split.py RUN_N1.callgrind RUN_N2.callgrind N2_MINUS_N1
"""
import re
import subprocess
import sys


def inclusive(path):
    """{function: inclusive Ir} and the program total, from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
        capture_output=True, text=True, check=True).stdout
    costs, total = {}, 0
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*)$", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        what = m.group(2).strip()
        if what.startswith("PROGRAM TOTALS"):
            total = n
            continue
        # "file:function [object]" -> function
        what = re.sub(r"\s+\[[^\]]*\]$", "", what)
        fn = what.split(":", 1)[1] if ":" in what and not what.startswith("<") else what
        costs[fn] = costs.get(fn, 0) + n
    return costs, total


def main():
    a, ta = inclusive(sys.argv[1])
    b, tb = inclusive(sys.argv[2])
    per = int(sys.argv[3])
    total = (tb - ta) / per
    diff = {f: (b.get(f, 0) - a.get(f, 0)) / per for f in set(a) | set(b)}
    # Named groups: the largest inclusive count of the functions matching each pattern (the
    # outermost frame of that work), as a share of one issuance.
    groups = [
        ("store: SledStore::insert_signed (transaction + flush, on the request's thread)", r"SledStore as lanyard::store::Store>::insert_signed$"),
        ("store: sled's own threads (log writes)", r"sled::threadpool::.*spawn_to.*closure|sled::pagecache::iobuf::.*write_to_log$"),
        ("CSR: x509::csr::verify_csr", r"lanyard::x509::csr::verify_csr$"),
        ("certificate: x509::build::sign", r"lanyard::x509::build::sign$"),
        ("PEM chain: x509::build::pem_chain", r"lanyard::x509::build::pem_chain"),
        ("ring ECDSA sign", r"ring::ec::suite_b::ecdsa::signing::EcdsaKeyPair::sign$"),
        ("ring ECDSA verify", r"ring::ec::suite_b::ecdsa::verification::.*verify"),
        ("caller identity per request (expiry, revocation)", r"lanyard::http::tls::Caller::current_identity$"),
        ("JSON request parsing", r"ApiJson.*from_request|serde_json::de::from_(slice|trait)"),
        ("malloc+free (self)", None),
    ]
    print(f"instructions per issuance (all threads): {total:,.0f}")
    print("| where | instructions | share |")
    print("|---|---|---|")
    for name, pat in groups:
        if pat is None:
            continue
        rx = re.compile(pat)
        hits = [v for f, v in diff.items() if rx.search(f)]
        v = max(hits) if hits else 0
        print(f"| {name} | {v:,.0f} | {100 * v / total:.0f}% |")
    print()
    print("top inclusive functions per issuance:")
    for f, v in sorted(diff.items(), key=lambda x: -x[1])[:60]:
        print(f"{v:14,.0f} {100 * v / total:5.1f}%  {f[:160]}")


if __name__ == "__main__":
    main()
