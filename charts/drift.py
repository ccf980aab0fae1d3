#!/usr/bin/env python3
"""Exits 1 when two Kubernetes YAML streams hold different objects (compared as parsed
objects keyed by apiVersion, kind, namespace, name: Helm orders objects by kind, the install
by part, and quotes scalars its own way). Prints each object only one side has and each
object that differs. Usage: drift.py WHAT A.yaml B.yaml"""
import json
import sys

import yaml


def objects(path):
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    keyed = {}
    for d in docs:
        meta = d.get("metadata", {})
        key = (d.get("apiVersion"), d.get("kind"), meta.get("namespace", ""), meta.get("name"))
        if key in keyed:
            sys.exit(f"{path}: {key} twice")
        keyed[key] = d
    return keyed


what, a_path, b_path = sys.argv[1:4]
a, b = objects(a_path), objects(b_path)
bad = False
for key in sorted(set(a) | set(b), key=str):
    if key not in b:
        print(f"{what}: only in {a_path}: {key}", file=sys.stderr)
        bad = True
    elif key not in a:
        print(f"{what}: only in {b_path}: {key}", file=sys.stderr)
        bad = True
    elif a[key] != b[key]:
        print(f"{what}: {key} differs:\n  {a_path}: {json.dumps(a[key], sort_keys=True)}\n  {b_path}: {json.dumps(b[key], sort_keys=True)}", file=sys.stderr)
        bad = True
if bad:
    sys.exit(1)
print(f"{what}: {len(a)} objects, the same")
