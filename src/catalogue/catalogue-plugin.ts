import { statSync, watch, type FSWatcher } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { ModelCatalogue } from './catalogue.js';
import { loadEffectiveCatalogue } from './catalogue-file.js';
import type { ModelSpec } from './model-spec.js';
import { MODELS } from './models.js';

declare module 'fastify' {
  interface FastifyInstance {
    catalogue: ModelCatalogue;
    /**
     * Reads CATALOGUE_FILE again and, when it validates (and the keys' allow-lists and
     * PRICE_OVERRIDES still hold), serves it at once; else logs why and keeps the current catalogue.
     */
    reloadCatalogue(): { ok: true } | { ok: false; error: string };
  }
}

export interface CatalogueOptions {
  /** The models served; the built-in catalogue (models.yaml) with CATALOGUE_FILE applied by default. */
  models?: readonly ModelSpec[];
  /** How often the file's mtime is compared, should fs.watch miss a change; 5 s unless set. */
  checkIntervalMs?: number;
  /** How long changes settle before a reload (an editor writes in several steps); 200 ms unless set. */
  debounceMs?: number;
}

function mtimeOf(path: string): number {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return -1;
  }
}

async function catalogue(app: FastifyInstance, options: CatalogueOptions): Promise<void> {
  const file = app.config.CATALOGUE_FILE;
  const models = options.models ?? (file ? loadEffectiveCatalogue(file) : MODELS);
  const current = new ModelCatalogue(models, app.config.PRICE_OVERRIDES);
  app.decorate('catalogue', current);

  let lastMtime = file ? mtimeOf(file) : -1;
  app.decorate('reloadCatalogue', () => {
    if (!file) return { ok: false as const, error: 'CATALOGUE_FILE is not set' };
    lastMtime = mtimeOf(file);
    try {
      const next = loadEffectiveCatalogue(file);
      // Checked before the swap: a catalogue that strands a key's allow-list or PRICE_OVERRIDES is refused.
      if (app.hasDecorator('keyStore')) app.keyStore.checkModels(next.map((m) => m.id));
      // And one that drops a model a key's fallbacks names (GATEWAY_KEYS_FILE).
      if (app.hasDecorator('keyStore') && app.config.GATEWAY_KEYS_FILE) {
        app.keyStore.checkFallbacks((name) => next.find((m) => m.id === name || m.aliases.includes(name)), app.config.GATEWAY_KEYS_FILE);
      }
      current.replace(next);
    } catch (err) {
      const error = (err as Error).message.replace(/^catalogue: /, '');
      app.log.warn({ catalogue_file: file, reason: error }, `CATALOGUE_FILE reload refused, the last good catalogue keeps serving: ${error}`);
      return { ok: false as const, error };
    }
    app.log.info({ catalogue_file: file, models: current.models.length }, 'CATALOGUE_FILE reloaded');
    return { ok: true as const };
  });
  if (!file) return;

  // Reloaded when the file changes (fs.watch, debounced; an mtime check every few seconds as a
  // fallback: watches miss changes on some file systems and on replaced files), and on SIGHUP by the
  // app's handler (src/app.ts), which is there whether CATALOGUE_FILE is set or not.
  let debounce: NodeJS.Timeout | undefined;
  const soon = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => app.reloadCatalogue(), options.debounceMs ?? 200);
    debounce.unref();
  };
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(file, { persistent: false }, soon);
    watcher.on('error', () => {});
  } catch (err) {
    app.log.warn({ err, catalogue_file: file }, 'cannot watch CATALOGUE_FILE; its modification time is checked periodically instead');
  }
  const poll = setInterval(() => {
    if (mtimeOf(file) !== lastMtime) soon();
  }, options.checkIntervalMs ?? 5000);
  poll.unref();
  app.addHook('onClose', async () => {
    clearTimeout(debounce);
    clearInterval(poll);
    watcher?.close();
  });
}

/** The models served, with CATALOGUE_FILE and PRICE_OVERRIDES applied; reloaded when the file changes. */
export const cataloguePlugin = fp(catalogue, { name: 'catalogue' });
