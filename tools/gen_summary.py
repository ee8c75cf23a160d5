#!/usr/bin/env python3
"""Builds fhir-profiles/r4-summary.json from the official R4 package (hl7.fhir.r4.examples-4.0.1.tgz, CC0).

For every resource type it lists the element paths its StructureDefinition marks as summary
(`isSummary`), relative to the resource and without the resource name: `identifier`,
`deceased[x]`, `link`, `link.other`. An element below a BackboneElement is listed only when its
parent is, so the server can keep a summary element and filter its backbone children in one walk.
`_summary=true` (src/fhir/summary.rs) keeps exactly these.

Usage: python3 tools/gen_summary.py PATH/TO/hl7.fhir.r4.examples-4.0.1.tgz > fhir-profiles/r4-summary.json
"""
import json
import sys
import tarfile


def main(tgz):
    out = {}
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            name = m.name.rsplit("/", 1)[-1]
            if not (name.startswith("StructureDefinition-") and name.endswith(".json")):
                continue
            sd = json.load(tar.extractfile(m))
            if sd.get("kind") != "resource" or sd.get("derivation") != "specialization" or sd.get("abstract"):
                continue
            rt = sd["type"]
            paths = []
            for e in sd["snapshot"]["element"]:
                path = e["path"]
                if path == rt or not e.get("isSummary"):
                    continue
                rel = path[len(rt) + 1:]
                parent = rel.rsplit(".", 1)[0] if "." in rel else None
                if parent is not None and parent not in paths:
                    continue
                paths.append(rel)
            out[rt] = paths
    json.dump(dict(sorted(out.items())), sys.stdout, indent=0, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
