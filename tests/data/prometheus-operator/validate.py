"""Validates Prometheus Operator objects (ServiceMonitor, PodMonitor, PrometheusRule) against the
JSON schemas in this directory, as `kubectl apply --validate=strict` would on a cluster whose
CRDs carry them: every object with declared properties rejects undeclared ones (the CRDs'
structural schemas prune unknown fields, and strict field validation turns that into an error),
and `metadata` is checked against Kubernetes' own ObjectMeta schema from kubernetes-validate.

usage: python validate.py FILE.yaml...   (the Python of the venv `cargo xtask setup` makes)
Prints `ok KIND/NAME (FILE)` per object; exits 1 on the first file with errors, listing them.
"""
import json
import pathlib
import sys

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv

HERE = pathlib.Path(__file__).parent
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"


def strict(schema):
    """additionalProperties: false wherever properties are declared and nothing else is allowed."""
    if isinstance(schema, dict):
        if schema.get("$ref") == OBJECT_META:
            schema["$ref"] = (
                "https://kubernetes.io/api/_definitions.json#/$defs/"
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            )
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for key, value in schema.items():
            if key == "properties":
                for prop in value.values():
                    strict(prop)
            else:
                strict(value)
    elif isinstance(schema, list):
        for item in schema:
            strict(item)
    return schema


def main(files):
    version = kv.latest_version()
    definitions = kv.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
    failed = False
    for name in files:
        for doc in yaml.safe_load_all(open(name)):
            if not doc:
                continue
            group, _, api = doc["apiVersion"].partition("/")
            path = HERE / f"{group}_{api}_{doc['kind'].lower()}.json"
            if not path.exists():
                print(f"error: no schema {path.name} for {doc['kind']} in {name}")
                failed = True
                continue
            validator = jsonschema.Draft202012Validator(
                strict(json.load(open(path))), registry=registry
            )
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            what = f"{doc['kind']}/{doc['metadata']['name']} ({name})"
            for e in errors:
                where = ".".join(str(p) for p in e.path) or "(top)"
                print(f"error: {what}: {where}: {e.message}")
            if errors:
                failed = True
            else:
                print(f"ok {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
