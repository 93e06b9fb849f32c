import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Logger } from '../observability/logger.js';
import type { Redis } from 'ioredis';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { ConfigError, isPublicExampleKey, type Config } from '../config.js';
import { GatewayError, clipName, fieldPath } from '../errors.js';
import { channelName } from '../storage/redis-channels.js';
import type { Database } from '../storage/database.js';
import { KeyRecords } from './key-records.js';
import { ClientKeys, sha256Hex, type Client } from './client-keys.js';
import { ADMIN_TEAM, MIN_CLIENT_KEY_LENGTH, isReservedTeam, keysFileSchema, modelAllowed, patternsMatchingNothing, type KeyPolicy } from './key-policy.js';

const CHANGES_CHANNEL = 'client-keys:changed';

/** Reads GATEWAY_KEYS_FILE; a bad file stops the start with a message naming it and the entry. */
export function loadKeysFile(path: string): Array<{ policy: KeyPolicy; key?: string; keySha256?: string }> {
  let raw: unknown;
  try {
    const text = readFileSync(path, 'utf8');
    raw = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError(`GATEWAY_KEYS_FILE ${path} cannot be read: ${(err as Error).message}`);
  }
  const parsed = keysFileSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => keysFileProblem(issue, raw)).join('; ');
    throw new ConfigError(`GATEWAY_KEYS_FILE ${path} is not valid: ${problems}`);
  }
  const short = parsed.data.keys.find((k) => k.key !== undefined && k.key.length < MIN_CLIENT_KEY_LENGTH);
  if (short) {
    throw new ConfigError(
      `GATEWAY_KEYS_FILE ${path}: the key of ${short.id} (team ${short.team}) is shorter than ${MIN_CLIENT_KEY_LENGTH} characters; use a long random key (openssl rand -hex 16)`,
    );
  }
  return parsed.data.keys.map(({ key, key_sha256, admin, ...policy }) => ({
    policy: { ...policy, admin: admin ?? false },
    ...(key ? { key } : {}),
    ...(key_sha256 ? { keySha256: key_sha256.toLowerCase() } : {}),
  }));
}

const KEY_ENTRY_FIELDS = Object.keys(keysFileSchema.shape.keys.element.shape);

/**
 * One problem of a keys file, naming the entry by its place and its id (`keys[2] (id design-web)`)
 * and the field; an unknown field lists the fields an entry takes. Never quotes a value: one may be a key.
 */
function keysFileProblem(issue: z.core.$ZodIssue, raw: unknown): string {
  const [top, index, ...rest] = issue.path;
  if (top !== 'keys' || typeof index !== 'number') return `${fieldPath(issue.path) || '(file)'}: ${issue.message}`;
  const entry = (raw as { keys: unknown[] }).keys[index];
  const id = typeof entry === 'object' && entry !== null && typeof (entry as { id?: unknown }).id === 'string' ? (entry as { id: string }).id : undefined;
  const where = `keys[${index}]${id !== undefined ? ` (id ${clipName(id)})` : ''}`;
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((field) => `${where}: "${clipName(field)}" is not a field of a key entry (allowed: ${KEY_ENTRY_FIELDS.join(', ')})`).join('; ');
  }
  return `${where}${rest.length > 0 ? `.${fieldPath(rest)}` : ''}: ${issue.message}`;
}

/** Where a configured key comes from, for a message that must never show the key. */
function keyOrigin(client: Client): string {
  if (client.source === 'file') return `key ${client.id} of the file`;
  if (client.source === 'api') return `minted key ${client.id}`;
  return client.admin ? 'GATEWAY_ADMIN_KEY' : `GATEWAY_API_KEYS (team ${client.team})`;
}

/** A keys file entry, checked, as it goes into the key set: its policy and the key's sha256 digest. */
interface FileKey {
  client: Client;
  digest: string;
}

/**
 * All client keys: GATEWAY_API_KEYS and GATEWAY_ADMIN_KEY (env), GATEWAY_KEYS_FILE (file), and keys
 * minted through the admin API (api, kept in the database as sha256 digests). A mint or revocation
 * reaches every replica at once through Redis, or within a second by polling the database. The keys
 * file is read at start and again on SIGHUP (reloadFile).
 */
export class KeyStore {
  readonly keys = new ClientKeys();
  private version = '';
  private timer: NodeJS.Timeout | undefined;
  private subscriber: Redis | undefined;
  /** The minted keys' rows. */
  readonly records: KeyRecords;
  /** GATEWAY_KEYS_FILE, if set. */
  private readonly file: string | undefined;

  constructor(
    config: Config,
    private readonly db: Database,
    private readonly redis: Redis | undefined,
    private readonly log: Logger,
    private modelIds: readonly string[],
    /** How often the database is checked for keys minted or revoked elsewhere (the fallback when Redis misses a change). */
    private readonly pollIntervalMs = 1000,
  ) {
    this.records = new KeyRecords(db);
    for (const k of config.GATEWAY_API_KEYS) {
      if (isReservedTeam(k.team)) throw new ConfigError(`GATEWAY_API_KEYS: the team name "${k.team}" is reserved for GATEWAY_ADMIN_KEY; give the key another team`);
      this.keys.add(k.key, { id: k.id, team: k.team, admin: false, source: 'env' });
    }
    if (config.GATEWAY_ADMIN_KEY) this.keys.add(config.GATEWAY_ADMIN_KEY, { id: 'admin', team: ADMIN_TEAM, admin: true, source: 'env' });
    this.file = config.GATEWAY_KEYS_FILE;
    if (this.file) this.setFileKeys(this.readFileKeys(this.file));
  }

  /**
   * Reads and checks the keys file: each id once (and none of GATEWAY_API_KEYS'), no reserved team,
   * allow-lists that match a served model, no public example key, each key its own. Throws a
   * ConfigError naming the file's entry; the keys served are not touched.
   */
  private readFileKeys(path: string): FileKey[] {
    const staged: FileKey[] = [];
    const outside = (client: Client | undefined) => (client !== undefined && client.source !== 'file' ? client : undefined);
    for (const entry of loadKeysFile(path)) {
      const client: Client = { ...entry.policy, source: 'file' };
      if (staged.some((k) => k.client.id === client.id) || this.keys.findById(client.id)?.source === 'env') {
        throw new ConfigError(`GATEWAY_KEYS_FILE: key id ${client.id} is used twice`);
      }
      if (!client.admin && isReservedTeam(client.team)) {
        throw new ConfigError(`GATEWAY_KEYS_FILE: key ${client.id} has the team name "${client.team}", reserved for admin keys; give it another team (or admin: true)`);
      }
      const typos = patternsMatchingNothing(client.models, this.modelIds);
      if (typos.length > 0) throw new ConfigError(`GATEWAY_KEYS_FILE: key ${client.id} allows models ${typos.join(', ')}, which ${typos.length === 1 ? 'matches' : 'match'} no model the gateway serves`);
      if (entry.key && isPublicExampleKey(entry.key)) {
        throw new ConfigError(`GATEWAY_KEYS_FILE: key ${client.id} is an example key from the documentation, which is public; set a key of your own`);
      }
      const digest = (entry.key ? sha256Hex(entry.key) : entry.keySha256!).toLowerCase();
      const same = staged.find((k) => k.digest === digest)?.client ?? outside(this.keys.findByDigest(digest));
      if (same) throw new ConfigError(`GATEWAY_KEYS_FILE: key ${client.id} is the same key as ${keyOrigin(same)}; give each key its own`);
      staged.push({ client, digest });
    }
    return staged;
  }

  /** Serves these keys as the file's, in place of the ones it had: a key no longer in the file stops working at once. */
  private setFileKeys(staged: readonly FileKey[]): void {
    this.keys.removeSource('file');
    for (const { client, digest } of staged) this.keys.addDigest(digest, client);
  }

  /**
   * Reads GATEWAY_KEYS_FILE again (on SIGHUP) and, when it passes the start's checks (`find`: a
   * served model by id or alias, for `fallbacks`), serves its keys at once: a key removed from the
   * file is refused from then on, on this replica. Else logs why and keeps the keys it had.
   */
  reloadFile(find: (name: string) => { id: string } | undefined): { ok: true } | { ok: false; error: string } {
    const file = this.file;
    if (!file) return { ok: false, error: 'GATEWAY_KEYS_FILE is not set' };
    const before = new Set(this.keys.list().filter((c) => c.source === 'file').map((c) => c.id));
    let staged: FileKey[];
    try {
      staged = this.readFileKeys(file);
      this.checkFallbacks(find, file, staged.map((k) => k.client));
    } catch (err) {
      const error = (err as Error).message;
      this.log.warn({ keys_file: file, reason: error }, `GATEWAY_KEYS_FILE reload refused, the keys it had keep working: ${error}`);
      return { ok: false, error };
    }
    this.setFileKeys(staged);
    const after = new Set(staged.map((k) => k.client.id));
    this.log.info(
      { keys_file: file, keys: after.size, removed: [...before].filter((id) => !after.has(id)), added: [...after].filter((id) => !before.has(id)) },
      'GATEWAY_KEYS_FILE reloaded',
    );
    return { ok: true };
  }

  /**
   * The keys file's `fallbacks`: each must be a model the gateway serves (id or alias), not twice,
   * and within the key's own allow-list; else the start stops naming the file, the key and the entry.
   */
  checkFallbacks(find: (name: string) => { id: string } | undefined, file: string, clients: readonly Client[] = this.keys.list()): void {
    for (const client of clients) {
      const seen = new Set<string>();
      (client.fallbacks ?? []).forEach((name, i) => {
        const where = `GATEWAY_KEYS_FILE ${file}: key ${client.id}: fallbacks[${i}]`;
        const spec = find(name);
        if (!spec) throw new ConfigError(`${where} names ${name}, which is not a model the gateway serves (an id or alias of GET /v1/models)`);
        if (seen.has(spec.id)) throw new ConfigError(`${where} names model ${spec.id} twice`);
        seen.add(spec.id);
        if (!modelAllowed(client, spec.id)) throw new ConfigError(`${where} names model ${spec.id}, which the key's models allow-list does not allow`);
      });
    }
  }

  /**
   * Checks the keys file's allow-lists against a new catalogue (CATALOGUE_FILE reload) and, when
   * every pattern still matches a model, takes its ids for later mints; else throws naming the key.
   */
  checkModels(modelIds: readonly string[]): void {
    for (const client of this.keys.list()) {
      const typos = patternsMatchingNothing(client.models, modelIds);
      if (typos.length > 0) throw new ConfigError(`key ${client.id} allows models ${typos.join(', ')}, which would match no model the gateway serves`);
    }
    this.modelIds = modelIds;
  }

  async start(): Promise<void> {
    await this.records.migrate();
    await this.reload();
    if (this.redis) {
      // Subscribed again here on each reconnection, not by ioredis (autoResubscribe), which leaves its
      // SUBSCRIBE's promise unobserved: a connection dropped again at once was an unhandled rejection.
      const subscriber = (this.subscriber = this.redis.duplicate({ autoResubscribe: false }));
      subscriber.on('error', () => {}); // reconnects by itself; the poll below covers the gap
      subscriber.on('message', () => void this.reload().catch((err) => this.log.error({ err }, 'reloading client keys failed')));
      // On every connection, one made after a start without Redis too (the poll covers a miss).
      subscriber.on('ready', () => void subscriber.subscribe(channelName(subscriber, CHANGES_CHANNEL)).catch(() => {}));
      await this.subscriber
        .connect()
        .then(() => this.subscriber!.subscribe(channelName(this.subscriber!, CHANGES_CHANNEL)))
        .catch((err: Error) => {
          // Redis down: the redis plugin has said so. Else this connection's own trouble is news.
          if (this.redis?.status === 'ready') this.log.warn({ reason: err.message }, 'cannot subscribe to key changes in redis; polling the database only');
        });
    }
    this.timer = setInterval(() => void this.reloadIfChanged().catch((err) => this.log.error({ err }, 'checking client keys failed')), this.pollIntervalMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.subscriber?.disconnect();
  }

  private stateVersion(): Promise<string> {
    return this.records.stateVersion();
  }

  private async reloadIfChanged(): Promise<void> {
    if ((await this.stateVersion()) !== this.version) await this.reload();
  }

  private async reload(): Promise<void> {
    const version = await this.stateVersion();
    const rows = await this.records.active();
    this.keys.removeSource('api');
    for (const row of rows) {
      const policy = row.policy;
      // Minted before the name was reserved: it would reach the admin key's jobs and usage.
      if (!policy.admin && isReservedTeam(policy.team)) {
        this.log.warn({ key_id: row.id, team: policy.team }, 'a minted key with the reserved team name is not accepted; revoke it and mint one with another team');
        continue;
      }
      this.keys.addDigest(row.keySha256, { ...policy, source: 'api' });
    }
    this.version = version;
  }

  private async announce(): Promise<void> {
    await this.redis?.publish(channelName(this.redis, CHANGES_CHANNEL), String(Date.now())).catch(() => {});
  }

  /** Makes a key, stores only its digest, and returns the plaintext this one time. */
  async mint(input: Omit<KeyPolicy, 'id' | 'admin'> & { id?: string; admin?: boolean }): Promise<{ policy: KeyPolicy; key: string }> {
    if (isReservedTeam(input.team)) {
      throw new GatewayError('invalid_request', `team: "${input.team}" is reserved for GATEWAY_ADMIN_KEY; give another team (an admin key is made with "admin": true)`, {
        details: [{ field: 'team', message: `must not be "${ADMIN_TEAM}" (reserved)` }],
      });
    }
    const typos = patternsMatchingNothing(input.models, this.modelIds);
    if (typos.length > 0) {
      throw new GatewayError('invalid_request', `models: ${typos.join(', ')} ${typos.length === 1 ? 'matches' : 'match'} no model the gateway serves; GET /v1/models lists them`, {
        details: typos.map((pattern) => ({ field: 'models', message: `${pattern} matches no model` })),
      });
    }
    const id = input.id ?? `${input.team}-${randomBytes(4).toString('hex')}`;
    const inUse = () => new GatewayError('conflict', `a key with id ${id} exists already`, { details: [{ field: 'id', message: 'must be unused' }] });
    const stored = () => this.records.exists(id);
    if (this.keys.findById(id) ?? (await stored())) throw inUse();
    const key = `gk-${randomBytes(24).toString('base64url')}`;
    const policy: KeyPolicy = { ...input, id, admin: input.admin ?? false };
    try {
      await this.records.insert({ id, keySha256: sha256Hex(key), policy, createdAt: Date.now() });
    } catch (err) {
      // Minted at the same moment, here or on another replica: the id was free when checked above.
      if (await stored().catch(() => undefined)) throw inUse();
      throw err;
    }
    await this.reload();
    await this.announce();
    return { policy, key };
  }

  async revoke(id: string): Promise<void> {
    const known = this.keys.findById(id);
    if (known && known.source !== 'api') {
      throw new GatewayError('invalid_request', `key ${id} comes from ${known.source === 'env' ? 'GATEWAY_API_KEYS / GATEWAY_ADMIN_KEY' : 'GATEWAY_KEYS_FILE'}; remove it there`, {
        details: [{ field: 'id', message: 'only keys minted through POST /v1/keys can be revoked here' }],
      });
    }
    if (!(await this.records.revoke(id, Date.now()))) throw new GatewayError('not_found', `no active key ${id}`);
    this.keys.removeId(id);
    await this.announce();
  }

  list(): Array<KeyPolicy & { source: string }> {
    return this.keys
      .list()
      .map(({ source, ...policy }) => ({ ...policy, source }))
      .sort((a, b) => a.id.localeCompare(b.id));
  }
}
