#!/usr/bin/env python3
"""Sends the WAF corpora (plugins/waf/tests/corpus) to each target over HTTP and counts which
requests each one blocks (answers 403): detection on the attacks, false positives on the benign
requests. Targets are NAME=HOST:PORT[/HOSTHEADER]; requests are interleaved across targets so
that all see the same traffic at the same time.

    corpus.py CORPUS_DIR OUT.md nginx=127.0.0.1:8081 sluice-crs=127.0.0.1:8080/crs.test ...
"""

import http.client
import json
import sys
from collections import defaultdict

BROWSER = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}


def load(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def send(target, case):
    host, port, host_header = target
    headers = dict(BROWSER)
    headers.update(case.get("headers", {}))
    headers["host"] = host_header
    body = case.get("body")
    if body is not None:
        body = body.encode()
        headers["content-type"] = case.get("content_type") or ""
        headers["content-length"] = str(len(body))
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.putrequest(case["method"], case["path"], skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        return connection.getresponse().status
    except Exception as error:  # a request the client or server refused to carry
        return f"error: {error.__class__.__name__}"
    finally:
        connection.close()


def main():
    corpus, out, *specs = sys.argv[1:]
    targets = {}
    for spec in specs:
        name, address = spec.split("=", 1)
        address, _, host_header = address.partition("/")
        host, port = address.rsplit(":", 1)
        targets[name] = (host, int(port), host_header or "app.example.com")
    results = {name: defaultdict(lambda: [0, 0, 0]) for name in targets}
    for kind in ("attacks", "benign"):
        for case in load(f"{corpus}/{kind}.jsonl"):
            for name, target in targets.items():
                status = send(target, case)
                row = results[name][(kind, case["class"])]
                row[1] += 1
                if status == 403:
                    row[0] += 1
                elif not isinstance(status, int) or status >= 500:
                    row[2] += 1
    lines = ["| target | attacks detected | benign blocked (false positives) | errors |", "|---|---|---|---|"]
    for name in targets:
        totals = {}
        for kind in ("attacks", "benign"):
            rows = [row for (k, _), row in results[name].items() if k == kind]
            totals[kind] = (sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows))
        (ab, at, ae), (bb, bt, be) = totals["attacks"], totals["benign"]
        lines.append(f"| {name} | {ab}/{at} = {100 * ab / at:.1f}% | {bb}/{bt} = {100 * bb / bt:.1f}% | {ae + be} |")
    lines.append("")
    lines.append("Per class (attacks detected):")
    lines.append("")
    classes = sorted({c for name in targets for (k, c) in results[name] if k == "attacks"})
    lines.append("| class | " + " | ".join(targets) + " |")
    lines.append("|---|" + "---|" * len(targets))
    for cls in classes:
        cells = [f"{results[n][('attacks', cls)][0]}/{results[n][('attacks', cls)][1]}" for n in targets]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
