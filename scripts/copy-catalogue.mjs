// Ships the built-in model catalogue (src/catalogue/models.yaml) next to its compiled loader in dist/,
// which reads it relative to its own module: tsc copies no YAML.
import { cpSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
cpSync(join(root, 'src/catalogue/models.yaml'), join(root, 'dist/catalogue/models.yaml'));
