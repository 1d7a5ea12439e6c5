//! Validates custom resources (KEDA, Prometheus operator) against their CRDs' schemas,
//! as compiled by kubernetes-models from the upstream CRDs.
//!   node validate-crs.mjs NODE_MODULES_DIR RESOURCES.json
// RESOURCES.json holds an array of {source, doc}. Prints one line per resource and
// exits 1 if any fails or is of a kind this script does not know: an unknown kind is
// an error, never a silent pass.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const KINDS = {
  "keda.sh/v1alpha1": ["@kubernetes-models/keda", "keda.sh/v1alpha1"],
  "monitoring.coreos.com/v1": ["@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1"],
};

async function modelOf(modules, apiVersion, kind) {
  const where = KINDS[apiVersion];
  if (!where || !/^[A-Za-z]+$/.test(kind)) return null;
  const file = join(modules, where[0], where[1], `${kind}.js`);
  try {
    return (await import(pathToFileURL(file).href))[kind];
  } catch {
    return null;
  }
}

const [modules, input] = process.argv.slice(2);
let failed = 0;
for (const { source, doc } of JSON.parse(readFileSync(input, "utf8"))) {
  const name = `${doc.kind}/${doc.metadata?.name} (${source})`;
  const Model = await modelOf(modules, doc.apiVersion, doc.kind);
  if (!Model) {
    console.log(`  FAIL ${name}: no schema for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`  ok   ${name} against ${doc.apiVersion} ${doc.kind}`);
  } catch (e) {
    console.log(`  FAIL ${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
