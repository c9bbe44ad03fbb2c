// Translate KB-02 written in CQL to ELM (once, not timed), then time cql-execution over one patient Bundle.
// Usage: node cql_runner.mjs WORKDIR ROUNDS   (WORKDIR holds kb02.cql, bundle.json, now.txt)
// Prints one JSON line: {"ms": [...], "indicator": ..., "translate_ms": ...}
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CqlTranslator, LibraryManager, ModelManager, createModelInfoProvider, createUcumService, stringAsSource }
  from "@cqframework/cql/cql-to-elm";

const require = createRequire(import.meta.url);
const HERE = dirname(fileURLToPath(import.meta.url));
const cql = require("cql-execution");
const cqlfhir = require("cql-exec-fhir");

const [workdir, roundsText] = process.argv.slice(2);
const rounds = Number(roundsText);
const modelInfo = readFileSync(require.resolve("cql-exec-fhir/lib/modelInfos/fhir-modelinfo-4.0.1.xml"), "utf8");
// The translator's JavaScript build carries the System model info as a string literal but does not register
// it by itself; take it from the installed package (no copy of it is kept in our repository).
const systemModelInfo = (() => {
  const source = readFileSync(join(HERE, "node_modules", "@cqframework", "cql", "cql.mjs"), "utf8");
  const found = /systemModelInfoXml = '((?:[^'\\]|\\.)*)'/.exec(source);
  if (!found) throw new Error("System model info not found in @cqframework/cql");
  return found[1].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
})();

const started = performance.now();
const modelManager = new ModelManager();
modelManager.modelInfoLoader.registerModelInfoProvider(
  createModelInfoProvider((id) => (id === "FHIR" ? stringAsSource(modelInfo)
                                  : id === "System" ? stringAsSource(systemModelInfo) : null)), true);
// Unit checks at translation time, from the UCUM library cql-execution itself uses.
const ucum = require("@lhncbc/ucum-lhc").UcumLhcUtils.getInstance();
const ucumService = createUcumService(
  (value, from, to) => String(ucum.convertUnitTo(from, Number(value), to).toVal),
  (unit) => (ucum.validateUnitString(unit).status === "valid" ? null : `invalid UCUM unit ${unit}`),
  () => { throw new Error("unit multiplication is not used by KB-02"); },
  () => { throw new Error("unit division is not used by KB-02"); });
const translator = CqlTranslator.fromText(readFileSync(join(workdir, "kb02.cql"), "utf8"),
                                          new LibraryManager(modelManager, undefined, undefined, ucumService));
const errors = translator.errors.asJsReadonlyArrayView();
if (errors.length > 0) {
  console.error(errors.map((e) => `${e.locator?.toLocator?.() ?? ""} ${e.message}`).join("\n"));
  process.exit(2);
}
const elm = JSON.parse(translator.toJson());
const translateMs = performance.now() - started;

const bundle = JSON.parse(readFileSync(join(workdir, "bundle.json"), "utf8"));
const now = cql.DateTime.parse(readFileSync(join(workdir, "now.txt"), "utf8").trim());
const executor = new cql.Executor(new cql.Library(elm), new cql.CodeService({}), { Now: now });

async function once() {
  const source = cqlfhir.PatientSource.FHIRv401();
  source.loadBundles([bundle]);
  const results = await executor.exec(source);
  const only = Object.values(results.patientResults)[0];
  return only.Indicator ?? null;
}

let indicator = await once(); // warm-up (JIT), not timed
const ms = [];
for (let i = 0; i < rounds; i++) {
  const t0 = performance.now();
  indicator = await once();
  ms.push(performance.now() - t0);
}
console.log(JSON.stringify({ ms, indicator, translate_ms: translateMs }));
