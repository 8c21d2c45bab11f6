# mcstatus's Bedrock ping (the unconnected ping a server list sends), for wakegate's tests:
#   python ping.py PORT      prints what mcstatus read as one JSON line: {"status": {...}}
#                            or {"error": "..."} when there was no answer
import json
import sys

from mcstatus import BedrockServer

try:
    status = BedrockServer.lookup(f"127.0.0.1:{sys.argv[1]}", timeout=5).status()
    print(json.dumps({"status": {
        "motd": status.motd.to_plain(),
        "players_online": status.players.online,
        "players_max": status.players.max,
        "version": status.version.name,
        "protocol": status.version.protocol,
        "brand": status.version.brand,
        "map_name": status.map_name,
        "gamemode": status.gamemode,
    }}))
except Exception as e:  # noqa: BLE001 - the test reads the error, whatever it is
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
