"""The server app of every backend: an httpbin-like header echo on http ports, a byte echo on tcp ports.

One program everywhere, so a scenario means the same thing on every backend: the local backend runs it in a
pod's network namespace, kind and existing run it in the pod's app container (any image with python3; the file
reaches the pod in a ConfigMap). It imports nothing from the package and needs only the standard library, so it
starts in a few milliseconds. HTTP answers are JSON ``{"method", "path", "headers", "body",
"workload"}`` (like httpbin ``/anything``; headers include X-Forwarded-Client-Cert when the sidecar added
it; ``workload`` names the pod that answered, so a Service with several workloads shows which one did),
written in ONE send: headers and body in separate writes hit Nagle + delayed ACK behind Envoy and
cost ~40 ms per request.

Usage: python echo.py --http PORT [--http PORT ...] --tcp PORT [...] --name WORKLOAD --tag RUN_ID
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import sys


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return body
            body += await reader.readexactly(size)
            await reader.readline()
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


async def serve_http(workload: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            first = await reader.read(1)
            if not first:
                return
            if not first.isalpha():  # e.g. a TLS ClientHello: answer like any HTTP server, at once
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            request_line = first + await reader.readline()
            method, _, rest = request_line.decode("latin-1").strip().partition(" ")
            path = rest.rsplit(" ", 1)[0]
            headers: dict[str, str] = {}
            raw_headers: dict[str, list[str]] = {}
            while True:
                line = (await reader.readline()).decode("latin-1")
                if line in ("\r\n", "\n", ""):
                    break
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
                raw_headers.setdefault(name.strip().title(), []).append(value.strip())
            body = await _read_body(reader, headers)
            status = 200
            if path.startswith("/status/") and path[8:].isdigit():
                status = int(path[8:])
            payload = json.dumps({"method": method, "path": path, "headers": raw_headers,
                                  "body": body.decode("utf-8", "replace"), "workload": workload}).encode()
            close = headers.get("connection", "").lower() == "close"
            head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Echo'}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
                    "\r\n").encode()
            writer.write(head + payload)
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(http_ports: list[int], tcp_ports: list[int], name: str) -> None:
    http = functools.partial(serve_http, name)
    servers = [await asyncio.start_server(http, "0.0.0.0", port) for port in http_ports]
    servers += [await asyncio.start_server(serve_tcp, "0.0.0.0", port) for port in tcp_ports]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, action="append", default=[])
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--name", default="", help="the workload (name.namespace) this app belongs to")
    parser.add_argument("--tag", default="", help="run id, so a sweep can recognise the process")
    options = parser.parse_args()
    asyncio.run(main(options.http, options.tcp, options.name))
    sys.exit(0)
