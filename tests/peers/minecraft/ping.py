"""Server-list pings with mcstatus, for wakegate's tests and benchmark.

    python ping.py PORT [COUNT]
    python ping.py PORT legacy

Pings 127.0.0.1:PORT COUNT times (default 1), each on a new connection the way the
client's server list does, and prints one JSON line per ping: {"ms": wall time of the whole
ping, "status": the server's raw status answer} or {"error": MESSAGE}.

With `legacy`, sends one pre-1.7 ping (mcstatus's LegacyServer: FE 01 FA) and prints
{"version": NAME, "protocol": N, "motd": TEXT, "online": N, "max": N} or {"error": MESSAGE}.
"""

import json
import sys
import time

from mcstatus import JavaServer, LegacyServer


def legacy(port: int) -> None:
    try:
        status = LegacyServer("127.0.0.1", port, timeout=10).status(tries=1)
        line = {
            "version": status.version.name,
            "protocol": status.version.protocol,
            "motd": status.motd.raw,
            "online": status.players.online,
            "max": status.players.max,
        }
    except Exception as e:  # noqa: BLE001 - every failure is reported to the caller
        line = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(line), flush=True)


def main() -> None:
    port = int(sys.argv[1])
    if sys.argv[2:3] == ["legacy"]:
        legacy(port)
        return
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    # Built from host and port, not looked up: no DNS SRV query on loopback.
    server = JavaServer("127.0.0.1", port, timeout=10)
    for _ in range(count):
        began = time.perf_counter()
        try:
            status = server.status(tries=1)
            line = {"ms": (time.perf_counter() - began) * 1000, "status": status.raw}
        except Exception as e:  # noqa: BLE001 - every failure is reported to the caller
            line = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
