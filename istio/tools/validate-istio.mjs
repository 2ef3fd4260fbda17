// Validate every Istio object in the given YAML files (or stdin, e.g. `kubectl kustomize`
// output) against Istio's CRD schemas, offline, with @kubernetes-models/istio.
// Non-Istio objects are skipped. Exit 0 when all Istio objects are valid, 1 otherwise.
//
//   node istio/tools/validate-istio.mjs file.yaml [...]
//   kubectl kustomize istio/overlays/production | node istio/tools/validate-istio.mjs -
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const ISTIO_GROUP = /(^|\.)istio\.io$/;

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.split("/");
  try {
    const mod = await import(`@kubernetes-models/istio/${group}/${version}/${kind}`);
    return mod[kind];
  } catch (err) {
    if (err && err.code === "ERR_MODULE_NOT_FOUND") return undefined;
    throw err;
  }
}

function label(source, index, doc) {
  const name = doc?.metadata?.name ?? "<unnamed>";
  const ns = doc?.metadata?.namespace ? `${doc.metadata.namespace}/` : "";
  return `${source}#${index} ${doc?.kind ?? "?"} ${ns}${name}`;
}

async function main(args) {
  const sources = args.length ? args : ["-"];
  let checked = 0;
  let skipped = 0;
  const failures = [];
  for (const source of sources) {
    const text = readFileSync(source === "-" ? 0 : source, "utf8");
    const docs = parseAllDocuments(text);
    for (const [index, parsed] of docs.entries()) {
      if (parsed.errors.length) {
        failures.push(`${source}#${index}: YAML error: ${parsed.errors[0].message}`);
        continue;
      }
      const doc = parsed.toJS();
      if (doc == null) continue;
      const group = String(doc.apiVersion ?? "").split("/")[0];
      if (!ISTIO_GROUP.test(group)) {
        skipped++;
        continue;
      }
      const Model = await modelFor(doc.apiVersion, doc.kind);
      if (!Model) {
        failures.push(`${label(source, index, doc)}: no schema for ${doc.apiVersion} ${doc.kind}`);
        continue;
      }
      try {
        new Model(doc).validate();
        checked++;
      } catch (err) {
        failures.push(`${label(source, index, doc)}: ${err.message}`);
      }
    }
  }
  for (const f of failures) console.error(`INVALID ${f}`);
  console.log(`istio objects valid: ${checked}, invalid: ${failures.length}, non-istio skipped: ${skipped}`);
  return failures.length ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
