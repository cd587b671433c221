#!/usr/bin/env python3
"""The incumbent's architecture, for scripts/bench: ThreatQ's Python "Devo IOC Exporter" reads the collection
with `requests`, one page after the other, keeps the rows in a dict, and replaces the lookup with devo-sdk's
`Lookup` (FULL, delay 0) over the X.509 relay. The same columns and duplicate rule as the Rust exporter, so both
do the same work. Prints `fetched N unique U` on success.

Usage (the venv of scripts/setup-test-deps, plus requests):
    incumbent.py --relay HOST:PORT --cert CRT --key KEY --chain CA --lookup NAME --collection NAME
ThreatQ is read from THREATQ_HOST, THREATQ_CLIENT_ID, THREATQ_USERNAME, THREATQ_PASSWORD, THREATQ_CA_FILE.
"""
import argparse
import json
import os
from datetime import datetime

import requests
from devo.sender import Lookup, Sender, SenderConfigSSL

WITH = "attributes,adversaries,score,type,status,sources,tags"
FIELDS = ["*", "attributes", "adversaries", "sources", "tags"]
HEADERS = ["ioc", "ioc_type", "status", "score", "attack_phase", "threat_type", "adversary", "has_adversary",
           "threatq_link", "threatq_id", "sources", "tags", "created_at", "updated_at", "expires_at"]
TYPES = ["str"] * 7 + ["int4", "str", "int4"] + ["str"] * 5
ADVERSARY_ATTRIBUTES = ("actor", "related adversary", "related actor")


def name_of(value):
    return value.get("name") if isinstance(value, dict) else value


def score_of(value):
    if isinstance(value, dict):
        value = value.get("manual_score") or value.get("generated_score")
    return "" if value is None else str(value)


def distinct(values):
    seen = []
    for v in values:
        v = (v or "").strip()
        if v and v not in seen:
            seen.append(v)
    return "; ".join(seen)


def row_of(ioc, host):
    attributes = [(a.get("name", "").lower(), a.get("value", "")) for a in ioc.get("attributes") or []]
    adversaries = [name_of(a) for a in ioc.get("adversaries") or []]
    count = ioc.get("related_adversary_count", len(adversaries))
    return [
        ioc["value"], name_of(ioc.get("type")) or "", name_of(ioc.get("status")) or "", score_of(ioc.get("score")),
        distinct(v for n, v in attributes if n == "attack phase"),
        distinct(v for n, v in attributes if n == "threat type"),
        distinct([v for n, v in attributes if n in ADVERSARY_ATTRIBUTES] + adversaries),
        str(count), f"https://{host}/indicators/{ioc['id']}/details", str(ioc["id"]),
        distinct(name_of(s) for s in ioc.get("sources") or []),
        distinct(name_of(t) for t in ioc.get("tags") or []),
        ioc.get("created_at") or "", ioc.get("updated_at") or "",
        ioc.get("expires_at") or ioc.get("expired_at") or "",
    ]


def rank(row):
    try:
        score = float(row[3])
    except ValueError:
        score = float("-inf")
    try:
        updated = datetime.strptime(row[13], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        updated = datetime.min
    return score, updated


def main():
    ap = argparse.ArgumentParser()
    for flag in ("--relay", "--cert", "--key", "--chain", "--lookup", "--collection"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    base = "https://" + os.environ["THREATQ_HOST"]
    http = requests.Session()
    # No REQUESTS_CA_BUNDLE or proxy from the environment: they would win over the stand-in's CA.
    http.trust_env = False
    http.verify = os.environ["THREATQ_CA_FILE"]
    token = http.post(f"{base}/api/token", params={"grant_type": "password",
                                                   "client_id": os.environ["THREATQ_CLIENT_ID"]},
                      json={"email": os.environ["THREATQ_USERNAME"], "password": os.environ["THREATQ_PASSWORD"]})
    token.raise_for_status()
    http.headers["Authorization"] = "Bearer " + token.json()["access_token"]
    saved = http.get(f"{base}/api/search/query")
    saved.raise_for_status()
    found = next(c for c in saved.json()["data"] if c["name"] == args.collection)
    query = found["json"] if isinstance(found["json"], dict) else json.loads(found["json"])
    query = query.get("api_query") or {}
    body = {"criteria": query.get("criteria"), "filters": query.get("filters"), "fields": FIELDS}

    rows, fetched, offset = {}, 0, 0
    while True:
        page = http.post(f"{base}/api/indicators/query", json=body,
                         params={"limit": args.batch, "offset": offset, "sort": "id", "with": WITH})
        page.raise_for_status()
        answer = page.json()
        data = answer.get("data") or []
        if not data:
            break
        for ioc in data:
            row = row_of(ioc, "threatq.example.com")
            kept = rows.get(row[0])
            if kept is None or rank(row) > rank(kept):
                rows[row[0]] = row
        fetched += len(data)
        offset += len(data)
        if offset >= answer.get("total", offset + 1):
            break

    host, port = args.relay.rsplit(":", 1)
    sender = Sender(SenderConfigSSL(address=(host, int(port)), key=args.key, cert=args.cert, chain=args.chain))
    lookup = Lookup(name=args.lookup, historic_tag=None, con=sender, delay=0)
    lookup.send_headers(headers=HEADERS, key_index=0, types=TYPES, event="START", action="FULL")
    for row in rows.values():
        lookup.send_data_line(key_index=0, fields=row)
    lookup.send_headers(headers=HEADERS, key_index=0, types=TYPES, event="END", action="FULL")
    sender.close()
    print(f"fetched {fetched} unique {len(rows)}")


if __name__ == "__main__":
    main()
