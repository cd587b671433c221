"""Runs devo-sdk's real Lookup + Sender for a batch of uploads and prints the bytes each put on the wire.

The Sender is the SDK's own (SenderConfigTCP), connected to a plain-TCP capture server in this process, so the
SDK's field cleaning, syslog framing and UTF-8 encoding all run unchanged; only TLS is left out.

stdin:  {"hostname": str, "cases": [{"lookup", "time": float, "action": "FULL"|"INC", "escape_quotes",
         "escape_newline", "headers": [str], "types": [str], "rows": [[str]], "deletes": [[str]]}]}
stdout: {"wires": [hex per case], "spaces": [code points where str.isspace()],
         "digits": [code points that match re's \\d]}
"""
import json
import queue
import re
import socket
import sys
import threading

request = json.load(sys.stdin)
socket.gethostname = lambda: request["hostname"]  # the syslog HOSTNAME the SDK writes

from devo.sender import Lookup, Sender, SenderConfigTCP  # noqa: E402

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
captured = queue.Queue()


def capture():
    while True:
        conn, _ = listener.accept()
        data = bytearray()
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.close()  # the EOF that Sender.close() waits for
        captured.put(bytes(data))


threading.Thread(target=capture, daemon=True).start()

wires = []
for case in request["cases"]:
    con = Sender(SenderConfigTCP(address=("127.0.0.1", listener.getsockname()[1])))
    lk = Lookup(name=case["lookup"], con=con, delay=0, escape_quotes=case["escape_quotes"],
                escape_newline=case["escape_newline"])
    lk.lookup_id = str(case["time"])  # what Lookup.__init__ does with time.time()
    headers, types = case["headers"], case["types"]
    lk.send_headers(headers=headers, key_index=0, types=types, event="START", action=case["action"])
    for row in case["rows"]:
        lk.send_data_line(key_index=0, fields=row)
    for row in case["deletes"]:
        lk.send_data_line(key_index=0, fields=row, delete=True)
    lk.send_headers(headers=headers, key_index=0, types=types, event="END", action=case["action"])
    con.close()
    wires.append(captured.get(timeout=30).hex())

digit = re.compile(r"\d")
json.dump({
    "wires": wires,
    "spaces": [c for c in range(0x110000) if chr(c).isspace()],
    "digits": [c for c in range(0x110000) if digit.match(chr(c))],
}, sys.stdout)
