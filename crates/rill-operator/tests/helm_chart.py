#!/usr/bin/env python3
"""Lint and render charts/rill-operator with real Helm (helm-python-sdk).

Installs the `helm-python-sdk` package with pip when it is missing. Prints
one JSON document on stdout:

  {"lint": {...}, "renders": {"<case>": [{"kind", "name", "namespace", "doc"}]},
   "manifest": "<the default render as one YAML stream>"}

Cases: "default" (cluster-wide) and "namespaced" (watchNamespaces: [jobs, etl]).

Against a cluster (a kubeconfig), as `helm install`/`helm uninstall` do:

  helm_chart.py install KUBECONFIG VALUES_JSON   # creates the namespace too
  helm_chart.py uninstall KUBECONFIG

each printing {"name", "namespace", "revision", "status"} of the release,
then `helm list` of the namespace as "releases". Both wait as `--wait`
does (Helm's status watcher): install until the Deployment's pods are
ready, uninstall until the release's objects are gone.

Exit status 2 when the package cannot be installed or imported, 1 when Helm
reports an error (on stderr).
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


def summary(release):
    return {
        "name": release.get("name"),
        "namespace": release.get("namespace"),
        "revision": release.get("revision"),
        "status": release.get("status"),
    }


def against_cluster(h, action, kubeconfig, values):
    config = h.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE)
    try:
        if action == "install":
            release = config.install(
                str(CHART),
                RELEASE,
                values,
                namespace=NAMESPACE,
                create_namespace=True,
                wait="watcher",
                timeout=120,
            )
        else:
            release = config.uninstall(RELEASE, wait="watcher", timeout=120).get("release") or {}
        releases = [summary(r) for r in config.list(all_states=True) or []]
    except h.HelmError as e:
        sys.stderr.write(f"helm {action} failed: {e}\n")
        sys.exit(1)
    print(json.dumps({**summary(release), "releases": releases}))


def main():
    h = helm()
    if len(sys.argv) > 1:
        action = sys.argv[1]
        if action not in ("install", "uninstall") or len(sys.argv) < 3:
            sys.stderr.write(__doc__)
            sys.exit(64)
        values = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
        against_cluster(h, action, sys.argv[2], values)
        return
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
