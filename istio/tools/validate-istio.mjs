// Validate every Istio object in the given YAML files (or stdin, e.g. `kubectl kustomize`
// output) against Istio's CRD schemas, offline, with @kubernetes-models/istio.
// Non-Istio objects are skipped. Exit 0 when all Istio objects are valid, 1 otherwise.
//
// Two passes: the JSON-schema validators generated from Istio's CRDs (types, enums,
// formats), then a strict pass that type-checks each object against the same package's
// TypeScript declarations, whose excess-property check rejects unknown (misspelt) fields
// that the CRD schemas let through.
//
//   node istio/tools/validate-istio.mjs file.yaml [...]
//   kubectl kustomize istio/overlays/production | node istio/tools/validate-istio.mjs -
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { parseAllDocuments } from "yaml";

const HERE = dirname(fileURLToPath(import.meta.url));
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

// Type-check `export const d<i>: I<Kind> = <object>;` for every object in one program.
// Returns [label, message] pairs.
function strictCheck(items) {
  if (!items.length) return [];
  const lines = [];
  const owner = [];
  items.forEach(({ doc }, i) => {
    const [group, version] = doc.apiVersion.split("/");
    const spec = `@kubernetes-models/istio/${group}/${version}/${doc.kind}`;
    lines.push(`import type { I${doc.kind} as T${i} } from ${JSON.stringify(spec)};`);
    owner.push(undefined);
  });
  items.forEach(({ doc }, i) => {
    const body = JSON.stringify(doc, null, 1).split("\n");
    body[0] = `export const d${i}: T${i} = ${body[0]}`;
    body[body.length - 1] += ";";
    for (const line of body) {
      lines.push(line);
      owner.push(i);
    }
  });
  const fileName = join(HERE, "__istio_strict_check__.ts");
  const text = lines.join("\n");
  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    // Plain ES5 lib: no DOM declarations to load, the models need nothing more.
    lib: ["lib.es5.d.ts"],
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const fileExists = host.fileExists.bind(host);
  const readFile = host.readFile.bind(host);
  const getSourceFile = host.getSourceFile.bind(host);
  host.fileExists = (f) => f === fileName || fileExists(f);
  host.readFile = (f) => (f === fileName ? text : readFile(f));
  host.getSourceFile = (f, lang, ...rest) =>
    f === fileName
      ? ts.createSourceFile(f, text, lang, true, ts.ScriptKind.TS)
      : getSourceFile(f, lang, ...rest);
  const program = ts.createProgram([fileName], options, host);
  const out = [];
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, " ");
    let where = "strict check";
    if (d.file && d.file.fileName === fileName && d.start !== undefined) {
      const i = owner[d.file.getLineAndCharacterOfPosition(d.start).line];
      if (i !== undefined) where = items[i].where;
    }
    out.push([where, message]);
  }
  return out;
}

async function main(args) {
  const sources = args.length ? args : ["-"];
  let skipped = 0;
  const failures = [];
  const schemaValid = [];
  for (const source of sources) {
    const text = readFileSync(source === "-" ? 0 : source, "utf8");
    const docs = parseAllDocuments(text);
    for (const [index, parsed] of docs.entries()) {
      if (parsed.errors.length) {
        failures.push([`${source}#${index}`, `YAML error: ${parsed.errors[0].message}`]);
        continue;
      }
      const doc = parsed.toJS();
      if (doc == null) continue;
      const group = String(doc.apiVersion ?? "").split("/")[0];
      if (!ISTIO_GROUP.test(group)) {
        skipped++;
        continue;
      }
      const where = label(source, index, doc);
      const Model = await modelFor(doc.apiVersion, doc.kind);
      if (!Model) {
        failures.push([where, `no schema for ${doc.apiVersion} ${doc.kind}`]);
        continue;
      }
      try {
        new Model(doc).validate();
        schemaValid.push({ doc, where });
      } catch (err) {
        failures.push([where, err.message]);
      }
    }
  }
  failures.push(...strictCheck(schemaValid));
  const bad = new Set(failures.map(([where]) => where));
  const valid = schemaValid.filter(({ where }) => !bad.has(where)).length;
  for (const [where, message] of failures) console.error(`INVALID ${where}: ${message}`);
  console.log(`istio objects valid: ${valid}, invalid: ${bad.size}, non-istio skipped: ${skipped}`);
  return failures.length ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
