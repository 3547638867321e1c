"""A webhook receiver that verifies Standard Webhooks signatures with the
`standardwebhooks` package from PyPI (an implementation Cairn does not share).

Usage: webhook_receiver.py SECRET MAX_REQUESTS
Prints its port on the first line, then one JSON line per request:
{"ok": true|false, "id": webhook-id, "body": parsed body or null, "error": ...}.
Answers 204 when the signature verifies, 401 otherwise. Serves at most
MAX_REQUESTS requests, and gives up after 120 s either way.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

SECRET = sys.argv[1]
MAX_REQUESTS = int(sys.argv[2])
hook = Webhook(SECRET)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = hook.verify(body, headers)
            result = {"ok": True, "id": headers.get("webhook-id"), "body": payload}
            self.send_response(204)
        except Exception as e:  # noqa: BLE001 - report every verification failure
            result = {"ok": False, "id": headers.get("webhook-id"), "body": None, "error": type(e).__name__}
            self.send_response(401)
        self.end_headers()
        print(json.dumps(result), flush=True)

    def log_message(self, *args):
        pass



class Counting(HTTPServer):
    handled = 0

    def process_request(self, request, client_address):
        Counting.handled += 1
        super().process_request(request, client_address)


server = Counting(("127.0.0.1", 0), Handler)
server.timeout = 1
print(server.server_address[1], flush=True)
deadline = time.monotonic() + 120
while Counting.handled < MAX_REQUESTS and time.monotonic() < deadline:
    server.handle_request()
