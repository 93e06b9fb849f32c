// Ships the built-in model catalogue (src/catalogue/models.yaml) next to its compiled loader in dist/,
// which reads it relative to its own module: tsc copies no YAML. The catalogue and openapi.yaml are
// also written as JSON (dist/catalogue/models.json, dist/openapi.json), which the built gateway
// reads instead: parsing the two YAML files at every start held resident memory for good
// (bench/README.md, seventh pass). The YAML stays the one source.
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
cpSync(join(root, 'src/catalogue/models.yaml'), join(root, 'dist/catalogue/models.yaml'));
const asJson = (from, to) => writeFileSync(join(root, to), JSON.stringify(parse(readFileSync(join(root, from), 'utf8'))));
asJson('src/catalogue/models.yaml', 'dist/catalogue/models.json');
asJson('openapi.yaml', 'dist/openapi.json');
