#!/usr/bin/env python3
"""Builds fhir-profiles/r4-model.json from the official R4 package (hl7.fhir.r4.examples-4.0.1.tgz, CC0).

The server validates JSON against this compact table: for every element context (a resource, a
complex datatype or an inline BackboneElement) it lists each JSON key (choice types already expanded
to `valueQuantity` etc.), the FHIR type of the value, whether it repeats, and for `code` elements with
a required binding, the index of the expanded code list.

Usage: python3 tools/gen_r4_model.py PATH/TO/hl7.fhir.r4.examples-4.0.1.tgz > fhir-profiles/r4-model.json
"""
import json
import sys
import tarfile

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def load(tgz):
    sds, vss, css = {}, {}, {}
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            name = m.name.rsplit("/", 1)[-1]
            if not name.endswith(".json"):
                continue
            prefix = name.split("-", 1)[0]
            if prefix not in ("StructureDefinition", "ValueSet", "CodeSystem"):
                continue
            doc = json.load(tar.extractfile(m))
            rt = doc.get("resourceType")
            if rt == "StructureDefinition":
                sds[doc["url"]] = doc
            elif rt == "ValueSet":
                vss[doc["url"]] = doc
            elif rt == "CodeSystem":
                css[doc["url"]] = doc
    return sds, vss, css


def concepts(cs_concepts):
    out = []
    for c in cs_concepts or []:
        out.append(c["code"])
        out.extend(concepts(c.get("concept")))
    return out


def expand(url, vss, css, seen=()):
    url = url.split("|")[0]
    vs = vss.get(url)
    if vs is None or url in seen:
        return None
    codes = []
    compose = vs.get("compose", {})
    if compose.get("exclude"):
        return None
    for inc in compose.get("include", []):
        if inc.get("filter"):
            return None
        for sub in inc.get("valueSet", []):
            got = expand(sub, vss, css, seen + (url,))
            if got is None:
                return None
            codes.extend(got)
        if "concept" in inc:
            codes.extend(c["code"] for c in inc["concept"])
        elif "system" in inc:
            cs = css.get(inc["system"])
            if cs is None or cs.get("content") != "complete":
                return None
            codes.extend(concepts(cs.get("concept")))
    return sorted(set(codes)) if codes else None


def type_code(t):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return ext.get("valueUrl") or ext.get("valueUri")
        return "string"
    return code


def main():
    sds, vss, css = load(sys.argv[1])
    wanted = [
        sd for sd in sds.values()
        if sd.get("derivation") == "specialization" or sd["type"] in ("Element", "Resource", "BackboneElement")
        if sd["kind"] in ("resource", "complex-type", "primitive-type")
    ]
    contexts = {}
    valuesets = []
    vs_index = {}
    resources = []
    primitives = []
    for sd in sorted(wanted, key=lambda s: s["type"]):
        tname = sd["type"]
        if sd["kind"] == "primitive-type":
            primitives.append(tname)
            continue
        if sd["kind"] == "resource" and not sd.get("abstract"):
            resources.append(tname)
        for el in sd["snapshot"]["element"]:
            path = el["path"]
            if "." not in path:
                contexts.setdefault(path, {})
                continue
            parent, name = path.rsplit(".", 1)
            ctx = contexts.setdefault(parent, {})
            many = 0 if el.get("max") in ("0", "1") else 1
            vsi = -1
            b = el.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                key = b["valueSet"].split("|")[0]
                if key not in vs_index:
                    codes = expand(key, vss, css)
                    vs_index[key] = len(valuesets) if codes else -1
                    if codes:
                        valuesets.append({"url": key, "codes": codes})
                vsi = vs_index[key]
            if "contentReference" in el:
                ctx[name] = ["@" + el["contentReference"].lstrip("#"), many, -1]
                continue
            types = [type_code(t) for t in el.get("type", [])]
            if name.endswith("[x]"):
                base = name[:-3]
                for t in types:
                    ctx[base + t[0].upper() + t[1:]] = [t, many, vsi if t == "code" else -1]
                continue
            if len(types) != 1:
                continue
            t = types[0]
            if t in ("BackboneElement", "Element") and parent != tname or (t in ("BackboneElement", "Element") and "." in path and any(e["path"].startswith(path + ".") for e in sd["snapshot"]["element"])):
                ctx[name] = ["@" + path, many, -1]
            else:
                ctx[name] = [t, many, vsi if t == "code" else -1]
    json.dump({
        "source": "hl7.fhir.r4.examples 4.0.1 StructureDefinitions (CC0)",
        "resources": sorted(resources),
        "primitives": sorted(primitives),
        "contexts": contexts,
        "valuesets": valuesets,
    }, sys.stdout, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    main()
