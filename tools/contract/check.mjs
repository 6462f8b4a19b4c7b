// Checks the topic contract with the tools other teams use (tests/docs/test_contract.py runs it):
//
//   node tools/contract/check.mjs --asyncapi schemas/json/asyncapi.json --schemas schemas/json [--records DIR ...]
//
// 1. The AsyncAPI project's parser reads the AsyncAPI document as it is; any diagnostic fails the check, except
//    the notice that a newer minor version of the specification exists (the contract is AsyncAPI 3.0 on purpose:
//    the version generators and brokers' tooling read today).
// 2. ajv, a second JSON Schema implementation (the first is pydantic, which generated the schemas), validates every
//    record of each replay output DIR against schemas/json: fund-ledger.jsonl, adl-events.jsonl, findings.jsonl,
//    postings.jsonl, adl-quantiles.jsonl (by their kind), and the input records of journal.jsonl and input.jsonl by
//    their type.
// Exit 0 when everything holds, 1 when something does not, 2 on bad arguments.
import fs from 'node:fs';
import path from 'node:path';
import { Parser } from '@asyncapi/parser';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const ALLOWED_DIAGNOSTICS = new Set(['asyncapi-latest-version']);
const OUTPUT_FILES = {
  'fund-ledger.jsonl': () => 'output-fund-ledger-entry',
  'adl-events.jsonl': () => 'output-adl-event',
  'findings.jsonl': () => 'output-finding',
  'postings.jsonl': () => 'output-posting',
  'adl-quantiles.jsonl': (record) => (record.kind === 'risk' ? 'output-adl-risk' : 'output-adl-quantile'),
  'journal.jsonl': (record) => `input-${record.type}`,
  'input.jsonl': (record) => `input-${record.type}`,
};

function parseArguments(argv) {
  const options = { asyncapi: null, schemas: null, records: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) usage(`${flag} needs a value`);
    if (flag === '--asyncapi') options.asyncapi = value;
    else if (flag === '--schemas') options.schemas = value;
    else if (flag === '--records') options.records.push(value);
    else usage(`unknown argument ${flag}`);
  }
  if (!options.asyncapi || !options.schemas) usage('--asyncapi and --schemas are required');
  return options;
}

function usage(problem) {
  console.error(`check.mjs: ${problem}\nusage: node check.mjs --asyncapi FILE --schemas DIR [--records DIR ...]`);
  process.exit(2);
}

async function checkAsyncApi(file) {
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, 'utf8'), { source: path.resolve(file) });
  const problems = diagnostics.filter((d) => !ALLOWED_DIAGNOSTICS.has(d.code));
  for (const d of diagnostics) {
    const kind = ['error', 'warning', 'information', 'hint'][d.severity] ?? `severity ${d.severity}`;
    console.log(`asyncapi: ${kind} ${d.code} at ${d.path.join('.') || '(root)'}: ${d.message}`);
  }
  if (!document || problems.length > 0) {
    console.log(`asyncapi: FAIL ${file}: ${problems.length} diagnostic(s)`);
    return false;
  }
  const channels = document.channels().length;
  const operations = document.operations().length;
  const messages = document.components().messages().length;
  console.log(`asyncapi: ok ${file} (AsyncAPI ${document.version()}: ${channels} channels, ${operations} operations, `
    + `${messages} messages)`);
  return true;
}

function loadSchemas(directory) {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  const names = [];
  for (const file of fs.readdirSync(directory).sort()) {
    if (!file.endsWith('.json') || file === 'asyncapi.json') continue;
    const name = file.slice(0, -'.json'.length);
    ajv.addSchema(JSON.parse(fs.readFileSync(path.join(directory, file), 'utf8')), name);
    names.push(name);
  }
  return { ajv, names };
}

function checkRecords(ajv, directory) {
  let ok = true;
  let total = 0;
  for (const [file, schemaOf] of Object.entries(OUTPUT_FILES)) {
    const target = path.join(directory, file);
    if (!fs.existsSync(target)) continue;
    const lines = fs.readFileSync(target, 'utf8').split('\n').filter((line) => line.length > 0);
    let invalid = 0;
    lines.forEach((line, index) => {
      const record = JSON.parse(line);
      const name = schemaOf(record);
      const validate = ajv.getSchema(name);
      if (!validate) {
        invalid += 1;
        if (invalid <= 5) console.log(`records: ${target}:${index + 1}: no schema ${name}`);
      } else if (!validate(record)) {
        invalid += 1;
        if (invalid <= 5) console.log(`records: ${target}:${index + 1}: not a valid ${name}: ${ajv.errorsText(validate.errors)}`);
      }
    });
    total += lines.length;
    console.log(`records: ${invalid === 0 ? 'ok' : 'FAIL'} ${target}: ${lines.length - invalid} of ${lines.length} valid`);
    ok &&= invalid === 0;
  }
  if (total === 0) {
    console.log(`records: FAIL ${directory} holds no records to validate`);
    return false;
  }
  return ok;
}

const options = parseArguments(process.argv.slice(2));
let ok = await checkAsyncApi(options.asyncapi);
const { ajv, names } = loadSchemas(options.schemas);
console.log(`schemas: ${names.length} compiled by ajv (JSON Schema 2020-12, strict)`);
for (const directory of options.records) ok = checkRecords(ajv, directory) && ok;
process.exit(ok ? 0 : 1);
