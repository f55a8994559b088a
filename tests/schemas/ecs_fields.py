"""Writes ecs-<version>-fields.json, the part of ECS's field definitions the ECS tests check against.

Source: generated/ecs/ecs_flat.yml of github.com/elastic/ecs at a release tag (Apache-2.0). Kept per field:
its type, `normalize` (array) and allowed values (with each event.category's expected event types);
descriptions and examples left out.

    git -C ecs show v9.4.0:generated/ecs/ecs_flat.yml > ecs_flat.yml
    python tests/schemas/ecs_fields.py ecs_flat.yml 9.4.0 > tests/schemas/ecs-9.4.0-fields.json
"""

from __future__ import annotations

import json
import sys

import yaml


def fields(flat: dict) -> dict:
    out = {}
    for name, f in sorted(flat.items()):
        entry = {"type": f["type"]}
        if f.get("normalize"):
            entry["normalize"] = f["normalize"]
        if f.get("allowed_values"):
            entry["allowed_values"] = {v["name"]: v.get("expected_event_types", []) for v in f["allowed_values"]}
        out[name] = entry
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        flat = yaml.safe_load(fh)
    json.dump({"ecs_version": sys.argv[2], "source": "github.com/elastic/ecs generated/ecs/ecs_flat.yml "
               f"v{sys.argv[2]}", "fields": fields(flat)}, sys.stdout, indent=0, sort_keys=True)  # fmt: skip
    sys.stdout.write("\n")
