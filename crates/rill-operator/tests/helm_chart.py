#!/usr/bin/env python3
"""Lint and render charts/rill-operator with real Helm (helm-python-sdk).

Installs the `helm-python-sdk` package with pip when it is missing. Prints
one JSON document on stdout:

  {"lint": {...}, "renders": {"<case>": [{"kind", "name", "namespace", "doc"}]},
   "manifest": "<the default render as one YAML stream>"}

Cases: "default" (cluster-wide) and "namespaced" (watchNamespaces: [jobs, etl]).
Exit status 2 when the package cannot be installed or imported.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parents[3] / "charts" / "rill-operator"
RELEASE = "rill-operator"
NAMESPACE = "rill-system"


def ensure(module, package):
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", package],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(f"pip install {package} failed:\n" + proc.stdout + proc.stderr)
        sys.exit(2)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        sys.stderr.write(f"{package} installed but not importable: {e}\n")
        sys.exit(2)


def helm():
    return ensure("helm_python", "helm-python-sdk")


def docs(text):
    yaml = ensure("yaml", "pyyaml")
    return [d for d in yaml.safe_load_all(text) if d]


def render(h, values):
    with h.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    stream = []
    objects = []
    for path in sorted(files):
        text = files[path]
        if not path.endswith((".yaml", ".yml")) or not text.strip():
            continue
        stream.append(f"---\n# Source: {path}\n{text.strip()}\n")
        for d in docs(text):
            meta = d.get("metadata", {})
            objects.append(
                {
                    "kind": d.get("kind"),
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "doc": d,
                }
            )
    return objects, "".join(stream)


def main():
    h = helm()
    lint = h.lint(str(CHART), strict=True)
    default, manifest = render(h, {})
    namespaced, _ = render(h, {"watchNamespaces": ["jobs", "etl"]})
    print(
        json.dumps(
            {
                "lint": lint,
                "renders": {"default": default, "namespaced": namespaced},
                "manifest": manifest,
                "helm_sdk_version": getattr(h, "helm_sdk_version", lambda: "?")(),
            }
        )
    )


if __name__ == "__main__":
    main()
