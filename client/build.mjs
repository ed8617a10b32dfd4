// Makes street.mjs (the ES module) from street.js (the script: a browser global, or
// CommonJS), so both builds are the same code. `node build.mjs` writes it; `node build.mjs
// --check` fails when the committed street.mjs is not what street.js makes (scripts/test
// runs the check).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, 'street.js'), 'utf8');
const made = `// street.mjs: the ES module build of street.js, made by build.mjs. Do not edit: edit
// street.js and run \`node build.mjs\`.
const module = { exports: {} };
${source}
const Street = module.exports;
const StreetAckError = Street.StreetAckError;
export { Street, StreetAckError };
export default Street;
`;
const out = join(here, 'street.mjs');
if (process.argv.includes('--check')) {
  let committed = '';
  try { committed = readFileSync(out, 'utf8'); } catch (e) { /* missing */ }
  if (committed !== made) {
    console.error('client/street.mjs is not what client/street.js makes: run `node client/build.mjs`');
    process.exit(1);
  }
  console.log('client/street.mjs is up to date');
} else {
  writeFileSync(out, made);
  console.log('wrote client/street.mjs');
}
