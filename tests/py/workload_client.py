# A SPIFFE Workload API client for tests/workload_api.rs, on py-spiffe (PyPI `spiffe`), a
# client written outside this project. Each mode prints JSON lines on stdout.
#
#   fetch          the X509-SVID and the X.509 bundles, once
#   watch          every X.509 context the stream delivers, until killed
#   no-header      FetchX509SVID without the security header: the status code
#   jwt            FetchJWTSVID: the status code
#   hold N         N open FetchX509SVID streams (10 HTTP/2 connections), "ready" once each
#                  got its first message; then holds them until killed
import asyncio, json, os, sys, threading

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

SOCKET = os.environ["SPIFFE_ENDPOINT_SOCKET"]
HEADER = [("workload.spiffe.io", "true")]


def out(obj):
    print(json.dumps(obj), flush=True)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def svid_json(svid, bundle_set):
    td = svid.spiffe_id.trust_domain
    bundle = bundle_set.get_bundle_for_trust_domain(td)
    return {
        "spiffe_id": str(svid.spiffe_id),
        "serial": format(svid.leaf.serial_number, "x"),
        "chain": [pem(c) for c in svid.cert_chain],
        "key": svid.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).hex(),
        "roots": sorted(pem(c) for c in bundle.x509_authorities) if bundle else [],
    }


def raw_stub():
    channel = grpc.insecure_channel(SOCKET.replace("unix://", "unix:", 1))
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def main():
    mode = sys.argv[1]
    if mode == "fetch":
        with WorkloadApiClient(socket_path=SOCKET, default_timeout=20) as client:
            svid = client.fetch_x509_svid()
            bundles = client.fetch_x509_bundles()
            td = svid.spiffe_id.trust_domain
            j = svid_json(svid, bundles)
            j["bundle_keys"] = sorted(str(b.trust_domain) for b in bundles.bundles)
            out(j)
    elif mode == "watch":
        client = WorkloadApiClient(socket_path=SOCKET)
        done = threading.Event()

        def on_success(ctx):
            out(svid_json(ctx.default_svid, ctx.x509_bundle_set))

        def on_error(err):
            out({"error": str(err)})
            done.set()

        client.stream_x509_contexts(on_success, on_error, retry_connect=False)
        done.wait()
    elif mode == "no-header":
        try:
            next(iter(raw_stub().FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=20)))
            out({"code": "OK"})
        except grpc.RpcError as e:
            out({"code": e.code().name, "details": e.details()})
    elif mode == "jwt":
        try:
            raw_stub().FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER, timeout=20
            )
            out({"code": "OK"})
        except grpc.RpcError as e:
            out({"code": e.code().name, "details": e.details()})
    elif mode == "hold":
        asyncio.run(hold(int(sys.argv[2])))


async def hold(n):
    target = SOCKET.replace("unix://", "unix:", 1)
    # Separate channels: grpc would otherwise share one connection, and a server limits the
    # streams of one connection.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(10)
    ]
    stubs = [workload_pb2_grpc.SpiffeWorkloadAPIStub(c) for c in channels]
    calls = [
        stubs[i % len(stubs)].FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        for i in range(n)
    ]
    for call in calls:
        await call.read()
    out({"ready": n})
    await asyncio.Event().wait()


main()
